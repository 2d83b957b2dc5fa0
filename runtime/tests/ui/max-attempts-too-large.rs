use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake, retry(max_attempts = 6))]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
