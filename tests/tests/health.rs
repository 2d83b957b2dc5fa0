//! Health against real servers: grpc.health.v1 through a tonic-health client, HTTP /health,
//! watchdogs, and registration that follows readiness in etcd.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::etcd::Etcd;
use serde_json::Value;
use steadfast::health::{Check, Health};
use steadfast::registry::{EtcdConfig, EtcdRegistry, Instance, Registry};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A check whose outcome the test controls.
fn switch() -> (Arc<AtomicBool>, Check) {
    let ok = Arc::new(AtomicBool::new(true));
    let flag = ok.clone();
    let check = Check::new(move || {
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if ok {
                Ok(())
            } else {
                Err("connection refused to postgres://app:hunter2@db:5432")
            }
        }
    });
    (ok, check)
}

async fn until(health: &Health, serving: bool) {
    let mut rx = health.subscribe();
    timeout(Duration::from_secs(5), rx.wait_for(|s| *s == serving))
        .await
        .unwrap_or_else(|_| panic!("health did not become serving={serving}"))
        .unwrap();
}

#[tokio::test]
async fn grpc_health_reports_serving_then_not_serving_and_watch_sees_it() {
    let (ok, check) = switch();
    let health = Health::builder()
        .check("db", check)
        .interval(Duration::from_millis(50))
        .hysteresis(2, 2)
        .grpc_service("user.UserService")
        .build()
        .unwrap();
    until(&health, true).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health.grpc_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = |name: &str| HealthCheckRequest {
        service: name.into(),
    };
    for name in ["", "user.UserService"] {
        let r = client.check(status(name)).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "service {name:?}");
    }
    let mut stream = client.watch(status("")).await.unwrap().into_inner();
    assert_eq!(
        stream.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    ok.store(false, Ordering::SeqCst); // the critical dependency fails
    let next = timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next.status,
        ServingStatus::NotServing as i32,
        "pushed to the Watch stream"
    );
    let r = client
        .check(status("user.UserService"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn http_health_is_503_with_the_failing_check_then_200_after_recovery() {
    let (ok, check) = switch();
    let (_, cache) = switch();
    let health = Health::builder()
        .check("db", check)
        .check("cache", cache)
        .interval(Duration::from_millis(50))
        .hysteresis(2, 3)
        .build()
        .unwrap();
    until(&health, true).await;
    let addr = common::http::serve(health.router()).await;
    let (code, body) = common::http::get(addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "SERVING");
    assert_eq!(v["checks"]["db"]["status"], "ok");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(v["checks"]["db"]["latency_ms"].is_u64());

    ok.store(false, Ordering::SeqCst);
    until(&health, false).await;
    for path in ["/health", "/health/ready"] {
        let (code, body) = common::http::get(addr, path).await;
        assert_eq!(code, 503, "{path}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "NOT_SERVING");
        assert_eq!(v["checks"]["db"]["status"], "failing");
        let error = v["checks"]["db"]["error"].as_str().unwrap();
        assert!(error.contains("connection refused"), "{error}");
        assert!(
            !error.contains("hunter2") && !error.contains("app:"),
            "credentials stripped: {error}"
        );
    }
    // Liveness is about the process, not its dependencies.
    assert_eq!(common::http::get(addr, "/health/live").await.0, 200);

    ok.store(true, Ordering::SeqCst);
    until(&health, true).await;
    let (code, _) = common::http::get(addr, "/health").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_non_critical_failure_is_reported_but_keeps_serving() {
    let (ok, check) = switch();
    ok.store(false, Ordering::SeqCst);
    let health = Health::builder()
        .check("cache", check.critical(false))
        .interval(Duration::from_millis(50))
        .hysteresis(1, 1)
        .build()
        .unwrap();
    let addr = common::http::serve(health.router()).await;
    // Wait until the check has run and been reported.
    let v = timeout(Duration::from_secs(5), async {
        loop {
            let (code, body) = common::http::get(addr, "/health").await;
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["checks"]["cache"]["error"].is_string() {
                assert_eq!(code, 200);
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(v["status"], "SERVING");
    assert_eq!(v["checks"]["cache"]["critical"], false);
    assert!(health.is_serving());
}

#[tokio::test]
async fn a_hanging_check_is_reported_as_timeout_and_blocks_nothing() {
    let health = Health::builder()
        .check(
            "hang",
            Check::new(std::future::pending::<Result<(), String>>)
                .timeout(Duration::from_millis(100)),
        )
        .interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let addr = common::http::serve(health.router()).await;
    let v = timeout(Duration::from_secs(5), async {
        loop {
            // The endpoint answers while the check hangs.
            let (code, body) = common::http::get(addr, "/health").await;
            assert_eq!(code, 503);
            let v: Value = serde_json::from_str(&body).unwrap();
            if !v["checks"]["hang"]["error"].is_null() {
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(v["checks"]["hang"]["error"], "timeout");
}

#[tokio::test]
async fn a_watchdog_that_is_not_petted_fails() {
    let health = Health::builder()
        .interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let dog = health.watchdog("consumer-loop", Duration::from_millis(200));
    for _ in 0..5 {
        dog.pet();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(health.is_serving(), "petted: healthy");
    until(&health, false).await; // no more pets
    let report = health.report();
    let error = report["checks"]["consumer-loop"]["error"].as_str().unwrap();
    assert!(error.starts_with("no heartbeat for"), "{error}");
    dog.pet();
    until(&health, true).await;
}

#[tokio::test]
async fn an_unhealthy_instance_leaves_etcd_and_comes_back() {
    let etcd = Etcd::start().await;
    let registry: Arc<dyn Registry> = Arc::new(
        EtcdRegistry::connect(EtcdConfig::parse(&format!("{}?ttl=3s", etcd.endpoints())).unwrap())
            .await
            .unwrap(),
    );
    let instance = Instance::new("user-svc", "u1", "http://127.0.0.1:50051");
    let (ok, check) = switch();
    let _health = Health::builder()
        .check("db", check)
        .interval(Duration::from_millis(50))
        .hysteresis(2, 2)
        .registration(registry.clone(), instance)
        .build()
        .unwrap();
    let set = registry.watch("user-svc").await.unwrap();
    let wait = |n: usize| {
        let mut set = set.clone();
        async move {
            timeout(Duration::from_secs(5), set.wait_for(|s| s.len() == n))
                .await
                .unwrap()
                .unwrap();
        }
    };
    wait(1).await; // registered once SERVING
    ok.store(false, Ordering::SeqCst);
    wait(0).await; // the key disappears...
    ok.store(true, Ordering::SeqCst);
    wait(1).await; // ...and comes back
}

#[tokio::test]
async fn ready_made_checks_report_real_dependencies() {
    // TCP: a listening port passes, a closed one fails.
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let closed_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // gRPC: a downstream that serves grpc.health.v1.
    let downstream = Health::builder().build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(downstream.grpc_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // etcd: the registry's own store.
    let etcd = Etcd::start().await;
    let reg = EtcdRegistry::connect(EtcdConfig::parse(&etcd.endpoints()).unwrap())
        .await
        .unwrap();

    let health = Health::builder()
        .check("tcp-open", steadfast::health::tcp(open_addr))
        .check(
            "tcp-closed",
            steadfast::health::tcp(closed_addr).critical(false),
        )
        .check("grpc", steadfast::health::grpc(grpc_url, ""))
        .check("etcd", steadfast::health::etcd(&reg))
        .interval(Duration::from_millis(50))
        .build()
        .unwrap();
    until(&health, true).await;
    let report = timeout(Duration::from_secs(5), async {
        loop {
            let r = health.report();
            if r["checks"]["tcp-closed"]["error"].is_string() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    for ok in ["tcp-open", "grpc", "etcd"] {
        assert_eq!(report["checks"][ok]["status"], "ok", "{ok}: {report}");
    }
    assert!(
        report["checks"]["tcp-closed"]["error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{report}"
    );
    // A check's latency is exported as a metric.
    let metrics = steadfast::metrics::render();
    assert!(
        metrics.contains("steadfast_health_check_up{check=\"tcp-open\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("steadfast_health_check_latency_seconds{check=\"etcd\"}"));
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_ends_as_the_latest_health_says_however_fast_checks_flip() {
    let registry: Arc<dyn Registry> = Arc::new(steadfast::registry::MemoryRegistry::new());
    let instance = Instance::new("user-svc", "u1", "http://127.0.0.1:50051");
    let (ok, check) = switch();
    // Two checks on one switch: two tasks publishing at once.
    let health = Health::builder()
        .check("db", check.clone())
        .check("db2", check)
        .interval(Duration::from_millis(1))
        .hysteresis(1, 1)
        .registration(registry.clone(), instance)
        .build()
        .unwrap();
    let set = registry.watch("user-svc").await.unwrap();
    for settle in [false, true, false] {
        for i in 0..300 {
            ok.store(i % 2 == 0, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
        ok.store(settle, Ordering::SeqCst);
        until(&health, settle).await;
        let mut set = set.clone();
        let n = usize::from(settle);
        timeout(Duration::from_secs(5), set.wait_for(|s| s.len() == n))
            .await
            .unwrap_or_else(|_| panic!("registered={settle} not reached"))
            .unwrap();
        // And it stays so: no stale update lands later.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(set.borrow().len(), n, "settled at {settle}");
        assert_eq!(health.is_serving(), settle);
    }
}
