//! Policy models shared by every way of configuring a client (builders, service-config JSON):
//! plain data with `validate()`, depending on nothing else in the crate.

pub(crate) mod json;
pub(crate) mod outlier;
