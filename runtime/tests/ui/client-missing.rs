use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", timeout = "1s")]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
