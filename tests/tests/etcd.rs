//! Registration and discovery against a real etcd, started by the test on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::{Action, Scripted, serve};
use etcd_client::{EventType, GetOptions};
use steadfast::client::{ClientConfig, ConfigSource, Downstreams};
use steadfast::registry::{EtcdConfig, EtcdRegistry, Instance, Registry};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use tokio::time::{Instant, timeout};
use tonic::Status;

const KEY: &str = "/steadfast/services/user-svc/u1";

async fn registry(etcd: &Etcd, ttl: &str) -> EtcdRegistry {
    EtcdRegistry::connect(EtcdConfig::parse(&format!("{}?ttl={ttl}", etcd.endpoints())).unwrap())
        .await
        .unwrap()
}

fn instance(id: &str, addr: &str) -> Instance {
    Instance::new("user-svc", id, addr)
}

/// Waits (up to `within`) for `key` to reach the wanted presence; returns how long it took.
async fn wait_key(etcd: &Etcd, key: &str, present: bool, within: Duration) -> Duration {
    let started = Instant::now();
    let mut c = etcd.client().await;
    let now = c.get(key, None).await.unwrap();
    if now.kvs().is_empty() != present {
        return started.elapsed();
    }
    // Watch from just after the read, so no change between the two is missed.
    let rev = now.header().unwrap().revision();
    let mut stream = c
        .watch(
            key,
            Some(etcd_client::WatchOptions::new().with_start_revision(rev + 1)),
        )
        .await
        .unwrap();
    let want = if present {
        EventType::Put
    } else {
        EventType::Delete
    };
    timeout(within, async {
        while let Some(resp) = stream.message().await.unwrap() {
            if resp.events().iter().any(|e| e.event_type() == want) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{key} present={present} not reached within {within:?}"));
    started.elapsed()
}

#[tokio::test]
async fn a_registration_has_the_documented_key_and_json_under_a_lease() {
    let etcd = Etcd::start().await;
    let reg = registry(&etcd, "10s").await;
    let mut i = instance("u1", "http://127.0.0.1:50051");
    i.zone = "zone-a".into();
    i.metadata.insert("build".into(), "42".into());
    reg.register(&i).await.unwrap();

    let mut c = etcd.client().await;
    let resp = c.get(KEY, None).await.unwrap();
    let kv = &resp.kvs()[0];
    assert_ne!(kv.lease(), 0, "bound to the process's lease");
    assert_eq!(Some(kv.lease()), reg.lease_id().await);
    let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
    for field in [
        "id",
        "service",
        "addr",
        "version",
        "zone",
        "weight",
        "metadata",
        "registered_at",
    ] {
        assert!(v.get(field).is_some(), "field {field} in {v}");
    }
    assert_eq!(v["addr"], "http://127.0.0.1:50051");
    assert_eq!(v["zone"], "zone-a");
    assert_eq!(v["metadata"]["build"], "42");

    // A second registration of the process shares the lease; shutdown revokes it at once.
    reg.register(&instance("u2", "http://127.0.0.1:50052"))
        .await
        .unwrap();
    let both = c
        .get(
            "/steadfast/services/user-svc/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let lease = reg.lease_id().await;
    assert_eq!(both.kvs().len(), 2);
    assert!(both.kvs().iter().all(|kv| Some(kv.lease()) == lease));
    reg.shutdown().await.unwrap();
    let gone = c
        .get(
            "/steadfast/services/user-svc/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(gone.kvs().is_empty());
}

#[tokio::test]
async fn when_keepalive_stops_the_key_is_gone_within_ttl_plus_one_second() {
    let etcd = Etcd::start().await;
    let reg = registry(&etcd, "2s").await;
    reg.register(&instance("u1", "http://127.0.0.1:50051"))
        .await
        .unwrap();
    // Held for longer than the TTL by keepalives...
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_key(&etcd, KEY, true, Duration::from_millis(1)).await;
    // ...then the process "freezes".
    reg.abort_keepalive();
    let took = wait_key(&etcd, KEY, false, Duration::from_secs(5)).await;
    assert!(
        took <= Duration::from_secs(3),
        "gone after {took:?}; TTL is 2 s"
    );
}

#[tokio::test]
async fn a_watching_client_sees_a_new_instance_within_200ms() {
    let etcd = Etcd::start().await;
    let watcher = registry(&etcd, "10s").await;
    let writer = registry(&etcd, "10s").await;
    let mut set = watcher.watch("user-svc").await.unwrap();
    // The initial listing has arrived (empty).
    timeout(Duration::from_secs(5), async {
        while !set.borrow().is_empty() {
            set.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the watch is established
    let started = Instant::now();
    writer
        .register(&instance("u9", "http://127.0.0.1:50059"))
        .await
        .unwrap();
    timeout(Duration::from_secs(2), async {
        while !set.borrow().iter().any(|i| i.id == "u9") {
            set.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(200), "seen after {took:?}");
}

#[tokio::test]
async fn an_externally_revoked_lease_leads_to_re_registration() {
    let etcd = Etcd::start().await;
    let reg = registry(&etcd, "3s").await;
    reg.register(&instance("u1", "http://127.0.0.1:50051"))
        .await
        .unwrap();
    let old = reg.lease_id().await.unwrap();
    let mut c = etcd.client().await;
    // Watch from the current revision, so neither event can be missed: the registry may put
    // the key back within milliseconds of the revoke.
    let rev = c.get(KEY, None).await.unwrap().header().unwrap().revision();
    let mut stream = c
        .watch(
            KEY,
            Some(etcd_client::WatchOptions::new().with_start_revision(rev + 1)),
        )
        .await
        .unwrap();
    c.lease_revoke(old).await.unwrap();
    timeout(Duration::from_secs(6), async {
        let mut deleted = false;
        while let Some(resp) = stream.message().await.unwrap() {
            for e in resp.events() {
                match e.event_type() {
                    EventType::Delete => deleted = true,
                    EventType::Put if deleted => return,
                    EventType::Put => {}
                }
            }
        }
    })
    .await
    .expect("the key was deleted by the revoke, then put back");
    let resp = c.get(KEY, None).await.unwrap();
    assert_ne!(resp.kvs()[0].lease(), old, "put again under a new lease");
}

#[tokio::test]
async fn the_registration_survives_an_etcd_restart() {
    let mut etcd = Etcd::start().await;
    let reg = registry(&etcd, "3s").await;
    reg.register(&instance("u1", "http://127.0.0.1:50051"))
        .await
        .unwrap();
    etcd.restart(0).await;
    // The keepalive stream broke with the restart. etcd keeps leases across a restart, so the
    // registry either keeps its lease alive over a new stream or, if the lease is gone, puts
    // the key under a new one: either way the key stays, under a live lease, past the TTL.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut c = etcd.client().await;
    let lease = loop {
        let kv = c
            .get(KEY, None)
            .await
            .ok()
            .and_then(|r| r.kvs().first().cloned());
        if let Some(kv) = kv
            && reg.lease_id().await == Some(kv.lease())
        {
            break kv.lease();
        }
        assert!(
            Instant::now() < deadline,
            "no registration kept after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Past the TTL, the key is still there and its lease is being kept alive.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let kv = c.get(KEY, None).await.unwrap().kvs().first().cloned();
    assert!(kv.is_some(), "the key outlived its TTL");
    let live = reg.lease_id().await.unwrap();
    let ttl = c.lease_time_to_live(live, None).await.unwrap().ttl();
    assert!(ttl > 0, "lease {live} (was {lease}) is alive: ttl {ttl}");
    assert_eq!(kv.unwrap().lease(), live);
}

#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient)]
trait Users {
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

#[tokio::test]
async fn with_etcd_stopped_calls_keep_succeeding_on_the_last_known_endpoints() {
    let mut etcd = Etcd::start().await;
    let server = serve(Scripted::new([Action::Ok])).await;
    let reg = registry(&etcd, "10s").await;
    reg.register(&instance("u1", &server.url())).await.unwrap();
    let discovery: Arc<dyn Registry> = Arc::new(registry(&etcd, "10s").await);
    let users =
        UsersClient::connect(ClientConfig::discover(discovery).downstreams(Downstreams::new()))
            .await
            .unwrap();
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();

    etcd.members[0].kill();
    let until = Instant::now() + Duration::from_secs(5);
    let mut calls = 0;
    while Instant::now() < until {
        users
            .get_user(GetUserRequest { id: 2 })
            .await
            .expect("calls succeed while etcd is down");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(calls > 20);
    etcd.restart(0).await;
    users.get_user(GetUserRequest { id: 3 }).await.unwrap();
    assert_eq!(users.core().channel().discovered_ids(), ["u1"]);
}

#[tokio::test]
async fn a_malformed_value_is_skipped() {
    let etcd = Etcd::start().await;
    let reg = registry(&etcd, "10s").await;
    let mut c = etcd.client().await;
    c.put("/steadfast/services/user-svc/bad", "{not json", None)
        .await
        .unwrap();
    c.put(
        "/steadfast/services/user-svc/noaddr",
        r#"{"id":"noaddr","service":"user-svc","addr":"nowhere"}"#,
        None,
    )
    .await
    .unwrap();
    reg.register(&instance("u1", "http://127.0.0.1:50051"))
        .await
        .unwrap();
    let mut set = reg.watch("user-svc").await.unwrap();
    timeout(Duration::from_secs(5), async {
        while set.borrow().is_empty() {
            set.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let ids: Vec<String> = set.borrow().iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, ["u1"]);
    // A malformed put while watching is skipped too; valid changes still arrive.
    c.put("/steadfast/services/user-svc/bad2", "\u{0}\u{1}", None)
        .await
        .unwrap();
    reg.register(&instance("u2", "http://127.0.0.1:50052"))
        .await
        .unwrap();
    timeout(Duration::from_secs(5), async {
        while set.borrow().len() < 2 {
            set.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let ids: Vec<String> = set.borrow().iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, ["u1", "u2"]);
}

#[tokio::test]
async fn a_three_member_cluster_survives_losing_one_member() {
    let mut etcd = Etcd::cluster(3).await;
    let reg =
        EtcdRegistry::connect(EtcdConfig::parse(&format!("{}?ttl=2s", etcd.endpoints())).unwrap())
            .await
            .unwrap();
    reg.register(&instance("u1", "http://127.0.0.1:50051"))
        .await
        .unwrap();
    let mut set = reg.watch("user-svc").await.unwrap();
    timeout(Duration::from_secs(5), async {
        while set.borrow().is_empty() {
            set.changed().await.unwrap();
        }
    })
    .await
    .unwrap();

    etcd.members[0].kill();
    // Longer than the TTL: keepalives must have gone through the other members.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut c = etcd.client().await;
    assert_eq!(
        c.get(KEY, None).await.unwrap().kvs().len(),
        1,
        "the registration survived"
    );
    // Discovery keeps working: a new instance is seen.
    reg.register(&instance("u2", "http://127.0.0.1:50052"))
        .await
        .unwrap();
    timeout(Duration::from_secs(10), async {
        while set.borrow().len() < 2 {
            set.changed().await.unwrap();
        }
    })
    .await
    .expect("discovery saw the new instance with one member down");
}

async fn etcd_registry(etcd: &Etcd) -> Arc<dyn Registry> {
    Arc::new(registry(etcd, "10s").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_replicas_discovered_through_etcd_fails_no_call() {
    use common::replicas::{burst, client, start};
    let etcd = Etcd::start().await;
    // Each replica is its own process in production: its own registry and lease.
    let mut replicas = Vec::new();
    for id in ["u1", "u2", "u3"] {
        replicas.push(start(&etcd_registry(&etcd).await, id, Duration::ZERO).await);
    }
    let users = client(&etcd_registry(&etcd).await).await;
    timeout(Duration::from_secs(5), async {
        while users.core().channel().discovered_ids().len() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let victim = replicas[1].task.abort_handle();
    let failed = burst(&users, 1200, 16, move || victim.abort()).await;
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_through_etcd_fails_no_call() {
    use common::replicas::{burst, client, start};
    let etcd = Etcd::start().await;
    let mut leaving = start(
        &etcd_registry(&etcd).await,
        "u1",
        Duration::from_millis(300),
    )
    .await;
    let _staying = start(
        &etcd_registry(&etcd).await,
        "u2",
        Duration::from_millis(300),
    )
    .await;
    let users = client(&etcd_registry(&etcd).await).await;
    timeout(Duration::from_secs(5), async {
        while users.core().channel().discovered_ids().len() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let stop = leaving.stop.take().unwrap();
    let failed = burst(&users, 1000, 8, move || {
        let _ = stop.send(());
    })
    .await;
    assert_eq!(failed, 0);
    leaving.task.await.unwrap();
    // Revoking the lease removed its key at once.
    let mut c = etcd.client().await;
    assert!(
        c.get("/steadfast/services/user-svc/u1", None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
    assert_eq!(users.core().channel().discovered_ids(), ["u2"]);
}

/// The deadline the server saw on the latest call.
fn last_timeout(server: &Scripted) -> Duration {
    server.seen().last().unwrap().grpc_timeout.unwrap()
}

#[tokio::test]
async fn a_service_config_put_in_etcd_reaches_a_running_client_within_a_second() {
    let etcd = Etcd::start().await;
    let scripted = Scripted::new([Action::Ok]);
    let server = serve(scripted.clone()).await;
    let reg = registry(&etcd, "10s").await;
    reg.register(&instance("u1", &server.url())).await.unwrap();
    let discovery: Arc<dyn Registry> = Arc::new(registry(&etcd, "10s").await);
    let users =
        UsersClient::connect(ClientConfig::discover(discovery).downstreams(Downstreams::new()))
            .await
            .unwrap();
    let mut status = users.core().config_status();
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    assert!(
        last_timeout(&scripted) > Duration::from_secs(5),
        "the method's own 10 s timeout"
    );

    // An operator puts a config at the documented key, as etcdctl would.
    let key = "/steadfast/config/user-svc";
    let config = r#"{"methodConfig": [{"name": [{}], "timeout": "0.25s",
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["ABORTED"]}}]}"#;
    let mut c = etcd.client().await;
    let put_at = Instant::now();
    c.put(key, config, None).await.unwrap();
    timeout(
        Duration::from_secs(1),
        status.wait_for(|s| s.source == ConfigSource::Registry),
    )
    .await
    .expect("the update reaches the running client within 1 s")
    .unwrap();
    let took = put_at.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Calls now run under it: the deadline is 0.25 s, and ABORTED is retried.
    scripted.script([
        Action::Fail(tonic::Code::Aborted),
        Action::Fail(tonic::Code::Aborted),
        Action::Ok,
    ]);
    let before = scripted.calls();
    users.get_user(GetUserRequest { id: 2 }).await.unwrap();
    assert_eq!(
        scripted.calls() - before,
        3,
        "two retries under the new policy"
    );
    assert!(last_timeout(&scripted) <= Duration::from_millis(250));

    // A malformed update is refused, naming the field; the last good config stays.
    c.put(
        key,
        r#"{"methodConfig": [{"name": [{}], "timeout": "soon"}]}"#,
        None,
    )
    .await
    .unwrap();
    let rejected = timeout(
        Duration::from_secs(1),
        status.wait_for(|s| s.rejected.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(rejected.source, ConfigSource::Registry);
    let why = rejected.rejected.unwrap();
    assert!(why.contains("methodConfig[0].timeout"), "{why}");
    scripted.script([Action::Fail(tonic::Code::Aborted), Action::Ok]);
    users.get_user(GetUserRequest { id: 3 }).await.unwrap();
    assert!(last_timeout(&scripted) <= Duration::from_millis(250));
    // So is one that is not JSON at all.
    c.put(key, "{not json", None).await.unwrap();
    c.put(key, config, None).await.unwrap();
    timeout(
        Duration::from_secs(1),
        status.wait_for(|s| s.rejected.is_none()),
    )
    .await
    .unwrap()
    .unwrap();

    // A client started now applies the stored config before its first call.
    let later: Arc<dyn Registry> = Arc::new(registry(&etcd, "10s").await);
    let fresh = UsersClient::connect(ClientConfig::discover(later).downstreams(Downstreams::new()))
        .await
        .unwrap();
    assert_eq!(
        fresh.core().config_status().borrow().source,
        ConfigSource::Registry
    );
    fresh.get_user(GetUserRequest { id: 4 }).await.unwrap();
    assert!(last_timeout(&scripted) <= Duration::from_millis(250));
    // One that opted out does not.
    let opted_out: Arc<dyn Registry> = Arc::new(registry(&etcd, "10s").await);
    let own = UsersClient::connect(
        ClientConfig::discover(opted_out)
            .service_config_from_registry(false)
            .downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    own.get_user(GetUserRequest { id: 5 }).await.unwrap();
    assert!(last_timeout(&scripted) > Duration::from_secs(5));

    // Removing the key brings back the local config (here, the method's own policy).
    c.delete(key, None).await.unwrap();
    timeout(
        Duration::from_secs(1),
        status.wait_for(|s| s.source == ConfigSource::Local),
    )
    .await
    .unwrap()
    .unwrap();
    users.get_user(GetUserRequest { id: 6 }).await.unwrap();
    assert!(last_timeout(&scripted) > Duration::from_secs(5));

    // The registry API writes the same key.
    reg.put_config(
        "user-svc",
        Some(r#"{"methodConfig": [{"name": [{}], "timeout": "0.5s"}]}"#),
    )
    .await
    .unwrap();
    let stored = c.get(key, None).await.unwrap();
    assert!(stored.kvs()[0].value_str().unwrap().contains("0.5s"));
    timeout(
        Duration::from_secs(1),
        status.wait_for(|s| s.source == ConfigSource::Registry),
    )
    .await
    .unwrap()
    .unwrap();
    users.get_user(GetUserRequest { id: 7 }).await.unwrap();
    let t = last_timeout(&scripted);
    assert!(
        t <= Duration::from_millis(500) && t > Duration::from_millis(250),
        "{t:?}"
    );
}
