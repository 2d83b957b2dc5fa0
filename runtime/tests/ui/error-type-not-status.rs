#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, std::io::Error>;
}

fn main() {}
