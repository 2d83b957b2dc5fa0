//! The Nacos backend against a real Nacos-protocol server (rnacos) on 127.0.0.1, seen from
//! Nacos's own HTTP API, as Java and Go services see it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::nacos::Nacos;
use common::{Action, Scripted, serve};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::registry::{Instance, Registry};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tokio::time::{Instant, timeout};
use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// Log lines, as written.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The hosts Nacos lists for `service` in `group`, healthy or not.
async fn listed(nacos: &Nacos, service: &str, group: &str) -> Vec<serde_json::Value> {
    let (code, body) = nacos
        .http(
            "GET",
            &format!(
                "/nacos/v1/ns/instance/list?serviceName={service}&groupName={group}&healthyOnly=false"
            ),
            "",
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["hosts"].as_array().cloned().unwrap_or_default()
}

/// Polls Nacos's HTTP API (every 50 ms, up to 5 s) until `f` holds for the listed hosts.
async fn until_listed(
    nacos: &Nacos,
    service: &str,
    group: &str,
    f: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let hosts = listed(nacos, service, group).await;
        if f(&hosts) {
            return hosts;
        }
        assert!(Instant::now() < deadline, "Nacos lists {hosts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steadfast_service_is_listed_by_the_nacos_http_api_with_its_metadata() {
    let nacos = Nacos::start().await;
    let registry = steadfast::registry::from_url(&nacos.url("&group=shop"))
        .await
        .unwrap();
    let mut instance = Instance::new("user-svc", "u1", "http://127.0.0.1:7601");
    instance.zone = "eu-1a".into();
    instance.metadata.insert("team".into(), "growth".into());
    registry.register(&instance).await.unwrap();
    let hosts = until_listed(&nacos, "user-svc", "shop", |h| h.len() == 1).await;
    let h = &hosts[0];
    assert_eq!(h["ip"], "127.0.0.1");
    assert_eq!(h["port"], 7601);
    assert_eq!(h["ephemeral"], true);
    assert_eq!(h["metadata"]["steadfast.id"], "u1");
    assert_eq!(h["metadata"]["steadfast.zone"], "eu-1a");
    assert_eq!(
        h["metadata"]["steadfast.version"],
        instance.version.as_str()
    );
    assert_eq!(h["metadata"]["team"], "growth");
    // Not in another group.
    assert!(listed(&nacos, "user-svc", "DEFAULT_GROUP").await.is_empty());
    registry.shutdown().await.unwrap();
    until_listed(&nacos, "user-svc", "shop", |h| h.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_through_the_http_api_is_discovered_and_called() {
    let nacos = Nacos::start().await;
    let server = serve(Scripted::new([Action::Ok])).await;
    // As a Java service registers itself: Nacos's HTTP API, no steadfast metadata.
    let body = format!(
        "serviceName=user-svc&ip=127.0.0.1&port={}&ephemeral=false&metadata={}",
        server.addr.port(),
        common::nacos::encode(r#"{"version":"2.1"}"#)
    );
    let (code, text) = nacos.http("POST", "/nacos/v1/ns/instance", &body).await;
    assert_eq!(code, 200, "{text}");
    let registry: Arc<dyn Registry> = steadfast::registry::from_url(&nacos.url("")).await.unwrap();
    let users = UsersClient::connect(
        ClientConfig::discover(registry.clone()).downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    let reply = users.get_user(GetUserRequest { id: 7 }).await.unwrap();
    assert_eq!(reply.id, 7);
    let id = format!("127.0.0.1:{}", server.addr.port());
    assert_eq!(
        users.core().channel().discovered_ids(),
        std::slice::from_ref(&id)
    );
    let set = registry.watch("user-svc").await.unwrap();
    assert_eq!(set.borrow().get(&id).unwrap().version, "2.1");

    // Weight 0 takes no traffic: the instance leaves discovery live.
    let body = format!(
        "serviceName=user-svc&ip=127.0.0.1&port={}&ephemeral=false&weight=0",
        server.addr.port()
    );
    let (code, text) = nacos.http("PUT", "/nacos/v1/ns/instance", &body).await;
    assert_eq!(code, 200, "{text}");
    let mut set = set;
    timeout(Duration::from_secs(5), set.wait_for(|s| s.is_empty()))
        .await
        .expect("a weight-0 instance leaves the watched set")
        .unwrap();
    // A weight again (2: rnacos takes an update to weight 1 for "unchanged"): discovered
    // again. Then disabled: gone again; enabled: back.
    for (params, listed) in [
        ("weight=2&enabled=true", 1),
        ("weight=2&enabled=false", 0),
        ("weight=2&enabled=true", 1),
    ] {
        let body = format!(
            "serviceName=user-svc&ip=127.0.0.1&port={}&ephemeral=false&{params}",
            server.addr.port()
        );
        let (code, text) = nacos.http("PUT", "/nacos/v1/ns/instance", &body).await;
        assert_eq!(code, 200, "{text}");
        timeout(Duration::from_secs(5), set.wait_for(|s| s.len() == listed))
            .await
            .unwrap_or_else(|_| panic!("{params}: expected {listed} instance(s)"))
            .unwrap();
    }
    users.get_user(GetUserRequest { id: 8 }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_nacos_registers_once_it_is_up() {
    let mut nacos = Nacos::start().await;
    let url = nacos.url("");
    nacos.kill();
    let registry = steadfast::registry::from_url(&url).await.unwrap();
    let err = registry
        .register(&Instance::new("user-svc", "early", "http://127.0.0.1:7701"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nacos"), "{err}");
    let mut status = registry.status();
    assert!(
        !status.borrow().is_registered(),
        "the status says why: {:?}",
        status.borrow()
    );
    nacos.restart().await;
    let up = Instant::now();
    timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.is_registered()),
    )
    .await
    .expect("registered once Nacos is up")
    .unwrap();
    eprintln!("registered {:?} after Nacos came up", up.elapsed());
    until_listed(&nacos, "user-svc", "DEFAULT_GROUP", |h| h.len() == 1).await;
}

#[tokio::test]
async fn with_auth_on_a_password_with_ampersand_and_percent_in_the_url_registers() {
    // Every event the login writes on this task, at every level, through steadfast's
    // subscriber.
    let logs = Capture::default();
    let writer = logs.clone();
    let _guard =
        tracing::subscriber::set_default(steadfast::telemetry::subscriber(move || writer.clone()));
    let nacos = Nacos::start_with_auth("ops", "p&ss%w0rd").await;
    let url = nacos.url("&username=ops&password=p%26ss%25w0rd");
    let registry = steadfast::registry::from_url(&url).await.unwrap();
    registry
        .register(&Instance::new("user-svc", "a1", "http://127.0.0.1:7801"))
        .await
        .unwrap();
    let set = registry.watch("user-svc").await.unwrap();
    assert_eq!(set.borrow().len(), 1);
    // Without the password, Nacos refuses, and the error says so without the password.
    let anonymous = steadfast::registry::from_url(&nacos.url("")).await.unwrap();
    let err = anonymous
        .register(&Instance::new("user-svc", "a2", "http://127.0.0.1:7802"))
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("p&ss"), "{err}");
    assert!(!anonymous.status().borrow().is_registered());
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("nacos_sdk"),
        "the client's events were captured: {text}"
    );
    assert!(
        !text.contains("p&ss") && !text.contains("p%26ss"),
        "a log line holds the password: {text}"
    );
}
