use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake, breaker(failure_ratio = 1.5))]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
