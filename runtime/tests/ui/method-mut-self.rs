use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Users {
    async fn get_user(&mut self, id: u64) -> Result<String, Status>;
}

fn main() {}
