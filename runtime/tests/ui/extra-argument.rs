use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Users {
    async fn get_user(&self, id: u64, verbose: bool) -> Result<String, Status>;
}

fn main() {}
