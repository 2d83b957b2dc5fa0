use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake, breaker(open_timeout = "500ms"))]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
