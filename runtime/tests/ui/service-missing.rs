use tonic::Status;

#[steadfast::resilient_client(client = Fake)]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
