use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Sessions {
    async fn connect(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
