// Generated code must not resolve names through the user's scope.
#![allow(dead_code, non_camel_case_types)]

#[path = "fake.rs"]
mod pb;

struct Result;
struct Option;
struct Some;
struct None;
struct Ok;
struct Clone;
struct Send;
struct Future;
struct Duration;
mod core {}
mod std {}
mod tonic {}
mod steadfast {}

#[::steadfast::resilient_client(service = "user-svc", client = pb::UserClient)]
trait Users {
    async fn get_user(&self, id: u64) -> ::core::result::Result<::std::string::String, ::tonic::Status>;
}

fn main() {}
