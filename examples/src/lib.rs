//! Example services built with steadfast, and the generated protobuf types they share.

/// Generated protobuf and tonic code.
pub mod pb {
    /// `user.proto`: the user service.
    pub mod user {
        tonic::include_proto!("user");
    }
    /// `order.proto`: the order service.
    pub mod order {
        tonic::include_proto!("order");
    }
}

pub mod cli;
pub mod demo;
pub mod http;
pub mod run;
pub mod services;
