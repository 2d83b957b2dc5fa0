#[path = "fake.rs"]
mod pb;

use tonic::Status;

#[steadfast::resilient_client(
    service = "user-svc",
    client = pb::UserClient,
    grpc_service = "user.UserService",
    timeout = "1s",
    retry(max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0,
          per_attempt_timeout = "300ms", on = [Unavailable, ResourceExhausted]),
    throttle(max_tokens = 20, token_ratio = 0.25),
    breaker(min_failures = 5, failure_ratio = 0.5, window = "20s", open_timeout = "5s",
            max_open_timeout = "1m", half_open_max_calls = 4, half_open_successes = 2,
            failures = [Unavailable, DeadlineExceeded, Internal]),
)]
pub trait Users {
    #[steadfast::retry(max_attempts = 5, on = [Unavailable, Aborted])]
    #[timeout = "3s"]
    async fn get_user(&self, id: u64) -> Result<String, Status>;
    #[steadfast::no_retry]
    async fn create_user(&self, name: String) -> Result<u64, tonic::Status>;
}

fn assert_send<T: Send + 'static>(_: &T) {}

// On the concrete client the futures are Send and 'static: they can be spawned.
fn spawnable(users: &UsersClient) {
    let fut = users.get_user(7);
    assert_send(&fut);
    let _ = tokio::spawn(fut);
}

// The trait can still be implemented by hand, e.g. as a fake in tests.
struct FakeUsers;
impl Users for FakeUsers {
    async fn get_user(&self, id: u64) -> Result<String, Status> {
        Ok(id.to_string())
    }
    async fn create_user(&self, _name: String) -> Result<u64, Status> {
        Ok(1)
    }
}

// Through the trait they are Send (and borrow the client).
fn generic<U: Users>(users: &U) -> impl std::future::Future<Output = Result<String, Status>> + Send + '_ {
    users.get_user(1)
}

fn main() {
    let _ = spawnable;
    let _ = generic::<FakeUsers>;
    let _ = generic::<UsersClient>;
    assert_eq!(UsersClient::SERVICE, "user-svc");
}
