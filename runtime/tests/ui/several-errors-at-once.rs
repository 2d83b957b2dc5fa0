use tonic::Status;

// Every mistake is reported in one pass, and the trait still exists afterwards, so code that
// uses it does not add errors of its own.
#[steadfast::resilient_client(service = "user-svc", client = Fake, retry(max_attempts = 9))]
trait Users {
    fn get_user(&self, id: u64) -> Result<String, Status>;
    #[timeout = "soon"]
    async fn create_user(&self, name: String) -> Result<u64, String>;
}

fn uses_the_trait<U: Users>(users: &U) -> Result<String, Status> {
    users.get_user(1)
}

fn main() {}
