use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Users {
    #[no_retry]
    #[retry(max_attempts = 2)]
    async fn create_user(&self, name: String) -> Result<u64, Status>;
}

fn main() {}
