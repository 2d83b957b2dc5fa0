use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake,
    hedge(max_attempts = 9, delay = "25h", non_fatal = [Ok, Unavailable]))]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
