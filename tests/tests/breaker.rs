//! Breakers through generated clients against real servers on 127.0.0.1: one breaker per
//! downstream service, shared by its methods and clients, independent across services.

mod common;

use common::{Action, Scripted, serve};
use steadfast::breaker::{BreakerState, is_open_rejection};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tonic::{Code, Status};

#[steadfast::resilient_client(
    service = "user-svc",
    client = UserServiceClient,
    retry(initial_backoff = "1ms", max_backoff = "5ms"),
)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
    #[no_retry]
    async fn create_user(&self, req: CreateUserRequest) -> Result<CreateUserReply, Status>;
}

#[steadfast::resilient_client(service = "profile-svc", client = UserServiceClient)]
trait Profiles {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

fn get() -> GetUserRequest {
    GetUserRequest { id: 1 }
}

#[tokio::test]
async fn a_failing_service_is_cut_off_for_all_methods_and_clients_but_not_other_services() {
    let failing = Scripted::new([Action::Fail(Code::Unavailable)]);
    let failing_server = serve(failing.clone()).await;
    let healthy = Scripted::new([Action::Ok]);
    let healthy_server = serve(healthy.clone()).await;
    let shared = Downstreams::new();
    let cfg = |url: String| {
        ClientConfig::endpoints([url])
            .unwrap()
            .downstreams(shared.clone())
    };

    let users = UsersClient::connect(cfg(failing_server.url()))
        .await
        .unwrap();
    let other_users_client = UsersClient::connect(cfg(failing_server.url()))
        .await
        .unwrap();
    let profiles = ProfilesClient::connect(cfg(healthy_server.url()))
        .await
        .unwrap();

    // Call 1: three failed attempts. Call 2: the fourth failure trips the breaker, and its
    // next attempt is rejected without reaching the server and without further retries.
    assert_eq!(
        users.get_user(get()).await.unwrap_err().code(),
        Code::Unavailable
    );
    let err = users.get_user(get()).await.unwrap_err();
    assert!(is_open_rejection(&err), "{err:?}");
    assert!(err.message().contains("user-svc"), "{}", err.message());
    assert_eq!(failing.calls(), 4);
    assert_eq!(users.core().breaker().state(), BreakerState::Open);

    // Another method of the same service, and another client of it: rejected at once.
    let err = users
        .create_user(CreateUserRequest { name: "a".into() })
        .await
        .unwrap_err();
    assert!(is_open_rejection(&err));
    let err = other_users_client.get_user(get()).await.unwrap_err();
    assert!(is_open_rejection(&err));
    assert_eq!(
        failing.calls(),
        4,
        "nothing reached the failing server while open"
    );

    // Another downstream service has its own breaker, still closed.
    profiles.get_user(get()).await.unwrap();
    assert_eq!(profiles.core().breaker().state(), BreakerState::Closed);
    assert_eq!(healthy.calls(), 1);
    assert_eq!(
        shared.breakers().states(),
        [
            ("profile-svc".to_owned(), BreakerState::Closed),
            ("user-svc".to_owned(), BreakerState::Open)
        ]
    );
}
