// `#[async_trait]` traits are supported when `#[resilient_client]` comes first.
#[path = "fake.rs"]
mod pb;

use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = pb::UserClient)]
#[async_trait::async_trait]
trait Users: Send + Sync {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

// Object safety: async_trait traits work behind `dyn`.
fn boxed(client: UsersClient) -> Box<dyn Users> {
    Box::new(client)
}

fn main() {
    let _ = boxed;
}
