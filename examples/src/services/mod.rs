//! The example system's services, as library code: the binaries and the demo run the same
//! services.

pub mod gateway;
pub mod order;
pub mod user;
