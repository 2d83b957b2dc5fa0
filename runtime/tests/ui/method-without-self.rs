use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Users {
    async fn get_user(id: u64) -> Result<String, Status>;
}

fn main() {}
