// A method may take `tonic::Request<M>` (or an imported `Request<M>`) to send metadata; a
// bare message and a request can be mixed in one trait.
#![allow(dead_code)]

#[path = "fake.rs"]
mod pb;

use tonic::Request;

#[steadfast::resilient_client(service = "user-svc", client = pb::UserClient)]
trait Users {
    async fn get_user(&self, req: tonic::Request<u64>) -> Result<String, tonic::Status>;
    #[no_retry]
    async fn create_user(&self, req: Request<String>) -> Result<u64, tonic::Status>;
}

async fn call(users: &UsersClient) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(7);
    req.metadata_mut().insert("x-tenant", "acme".parse().unwrap());
    users.get_user(req).await
}

fn main() {}
