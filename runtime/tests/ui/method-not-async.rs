use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Users {
    fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
