use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake, timeout = "10 parsecs")]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
