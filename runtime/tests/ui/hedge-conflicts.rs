use tonic::Status;

// Hedging is for idempotent methods, and A6 allows one policy per method.
#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Users {
    #[no_retry]
    #[hedge(max_attempts = 3)]
    async fn create_user(&self, name: String) -> Result<u64, Status>;

    #[hedge(delay = "20ms")]
    #[retry(max_attempts = 2)]
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
