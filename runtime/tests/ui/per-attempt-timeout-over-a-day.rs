use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake, retry(per_attempt_timeout = "25h"))]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
