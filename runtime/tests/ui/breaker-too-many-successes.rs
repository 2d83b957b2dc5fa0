use tonic::Status;

// Closing needs more successful probes than may ever be in flight at once.
#[steadfast::resilient_client(
    service = "user-svc",
    client = Fake,
    breaker(half_open_max_calls = 2, half_open_successes = 5),
)]
trait Users {
    async fn get_user(&self, id: u64) -> Result<String, Status>;
}

fn main() {}
