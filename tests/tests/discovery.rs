//! Discovery over the embedded registry with real servers on 127.0.0.1: replicas come and
//! go under load and no call fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::replicas::{Replica, burst, client, start};
use steadfast::client::{ClientConfig, Downstreams};
use steadfast::discovery::OutlierDetection;
use steadfast::registry::{Instance, MemoryRegistry, Registry};
use steadfast_examples::pb::user::user_service_client::UserServiceClient;
use steadfast_examples::pb::user::user_service_server::UserServiceServer;
use steadfast_examples::pb::user::{GetUserReply, GetUserRequest};
use steadfast_examples::run::{Process, wait_until};

fn memory() -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new())
}

/// Each replica is its own "process": its own lease on the shared table.
fn process(registry: &MemoryRegistry) -> Arc<dyn Registry> {
    Arc::new(registry.session())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_replicas_under_a_burst_fails_no_call() {
    let registry = memory();
    let replicas = [
        start(&registry, "u1", Duration::ZERO).await,
        start(&registry, "u2", Duration::ZERO).await,
        start(&registry, "u3", Duration::ZERO).await,
    ];
    let users = client(&registry).await;
    let victim = replicas[1].task.abort_handle();
    // Killed abruptly, like SIGKILL: connections reset, nothing deregistered.
    let failed = burst(&users, 1500, 16, move || victim.abort()).await;
    assert_eq!(failed, 0, "no call may fail when one replica dies");
    let counts: Vec<usize> = replicas
        .iter()
        .map(|r| r.replica.calls.load(Ordering::SeqCst))
        .collect();
    assert!(
        counts[0] > 300 && counts[2] > 300,
        "the survivors carried the load: {counts:?}"
    );
    assert!(
        counts[1] < 1500 / 3 + 50,
        "the dead replica stopped receiving calls: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_under_load_fails_no_call() {
    let table = MemoryRegistry::new();
    let registry: Arc<dyn Registry> = Arc::new(table.clone());
    let mut replicas = vec![
        start(&process(&table), "u1", Duration::from_millis(200)).await,
        start(&process(&table), "u2", Duration::from_millis(200)).await,
    ];
    let users = client(&registry).await;
    let stop = replicas[0].stop.take().unwrap();
    let failed = burst(&users, 1000, 8, move || {
        let _ = stop.send(());
    })
    .await;
    assert_eq!(failed, 0);
    let r = replicas.remove(0);
    r.task.await.unwrap(); // it exited by itself after draining
    assert_eq!(users.core().channel().discovered_ids(), ["u2"]);
    let _ = r.instance;
}

#[tokio::test]
async fn a_retry_goes_to_another_replica_and_a_failing_one_is_ejected() {
    let registry = memory();
    let bad = start(&registry, "bad", Duration::ZERO).await;
    let good = start(&registry, "good", Duration::ZERO).await;
    bad.replica.failing.store(true, Ordering::SeqCst);
    let users = client(&registry).await;
    for i in 0..20 {
        let reply = users.get_user(GetUserRequest { id: i }).await.unwrap();
        assert_eq!(reply.served_by, "good");
    }
    // Five failures in a row while the other replica answered ejected it (Envoy's
    // consecutive_5xx): it saw at most five calls, and every call still succeeded.
    assert!(
        bad.replica.calls.load(Ordering::SeqCst) <= 5,
        "{}",
        bad.replica.calls.load(Ordering::SeqCst)
    );
    assert_eq!(good.replica.calls.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_new_instance_is_used_as_soon_as_it_registers() {
    let registry = memory();
    let first = start(&registry, "u1", Duration::ZERO).await;
    let users = client(&registry).await;
    users.get_user(GetUserRequest { id: 1 }).await.unwrap();
    let second = start(&registry, "u2", Duration::ZERO).await;
    let mut seen_second = false;
    for i in 0..10 {
        // Round-robin: within a couple of calls the new instance serves one.
        if users
            .get_user(GetUserRequest { id: i })
            .await
            .unwrap()
            .served_by
            == "u2"
        {
            seen_second = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(seen_second, "the new instance received calls");
    let _ = (first, second);
}

#[tokio::test]
async fn no_instances_is_a_clear_unavailable() {
    let registry = memory();
    let users = client(&registry).await;
    let err = users.get_user(GetUserRequest { id: 1 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("user-svc"), "{}", err.message());
    let _ = common::Action::Ok;
}

/// A client without retries, so what the balancer does shows in every call; its breaker
/// stays out of the way (the ejections below take a run of failures).
#[steadfast::resilient_client(service = "user-svc", client = UserServiceClient, timeout = "2s",
    breaker(min_failures = 10000))]
trait OneShot {
    #[no_retry]
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, tonic::Status>;
}

/// A replica as a process of its own (so that killing it closes every socket).
async fn replica_process(table: &MemoryRegistry, id: &str) -> (Process, Replica) {
    let replica = Replica {
        id: id.into(),
        calls: Arc::default(),
        failing: Arc::default(),
    };
    let (registry, svc, id) = (table.session(), replica.clone(), id.to_owned());
    let (process, ()) = Process::start(&id.clone(), move || async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(UserServiceServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        registry
            .register(&Instance::new("user-svc", id, format!("http://{addr}")))
            .await?;
        Ok(())
    })
    .await
    .unwrap();
    (process, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_spreads_calls_when_most_endpoints_are_ejected() {
    let table = MemoryRegistry::new();
    let (_p1, r1) = replica_process(&table, "u1").await;
    let (_p2, r2) = replica_process(&table, "u2").await;
    let (mut p3, _r3) = replica_process(&table, "u3").await;
    // Eject on two failures in a row; never for connection failures alone, so that the
    // refusing endpoint stays in good standing and only panic mode can route around it.
    let od = OutlierDetection {
        consecutive_failure: Some(2),
        consecutive_local_origin_failure: None,
        max_ejection_percent: 100,
        base_ejection_time: Duration::from_secs(60),
        ..OutlierDetection::default()
    };
    let config = |panic: u32| {
        ClientConfig::discover(Arc::new(table.clone()))
            .downstreams(Downstreams::new())
            .outlier_detection(od)
            .unwrap()
            .panic_threshold(panic)
            .unwrap()
    };
    let with_panic = OneShotClient::connect(config(50)).await.unwrap();
    let without = OneShotClient::connect(config(0)).await.unwrap();
    for c in [&with_panic, &without] {
        let discovered = wait_until(Duration::from_secs(5), || {
            c.core().channel().discovered_ids().len() == 3
        })
        .await;
        assert!(discovered);
    }
    // u1 and u2 fail while u3 answers: both get ejected, in both clients.
    r1.failing.store(true, Ordering::SeqCst);
    r2.failing.store(true, Ordering::SeqCst);
    for c in [&with_panic, &without] {
        for i in 0..30 {
            let _ = c.get_user(GetUserRequest { id: i }).await;
            if c.core().channel().ejected_ids().len() == 2 {
                break;
            }
        }
        let mut ejected = c.core().channel().ejected_ids();
        ejected.sort();
        assert_eq!(ejected, ["u1", "u2"]);
    }
    // Now u1 and u2 are healthy but ejected, and u3, the only one in good standing, refuses.
    r1.failing.store(false, Ordering::SeqCst);
    r2.failing.store(false, Ordering::SeqCst);
    p3.kill();

    let rate = |c: OneShotClient| async move {
        let started = tokio::time::Instant::now();
        let (mut ok, mut calls) = (0u32, 0u32);
        while started.elapsed() < Duration::from_secs(1) {
            calls += 1;
            ok += u32::from(c.get_user(GetUserRequest { id: 1 }).await.is_ok());
        }
        (ok, calls)
    };
    let (ok, calls) = rate(with_panic).await;
    eprintln!("panic mode: {ok}/{calls} succeeded");
    assert!(
        calls > 10 && ok * 100 >= calls * 60,
        "panic mode: {ok}/{calls}"
    );
    let (ok, calls) = rate(without).await;
    eprintln!("without panic mode: {ok}/{calls} succeeded");
    assert!(
        ok * 10 <= calls,
        "without panic mode calls pile onto the refusing endpoint: {ok}/{calls}"
    );
}

#[tokio::test]
async fn an_attempt_that_never_reached_a_server_is_resent_at_once_uncounted() {
    let table = MemoryRegistry::new();
    // A port with nothing listening: every connection is refused.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let script = common::Scripted::new([common::Action::Ok]);
    let server = common::serve(script.clone()).await;
    table
        .register(&Instance::new(
            "user-svc",
            "dead",
            format!("http://{refused}"),
        ))
        .await
        .unwrap();
    table
        .register(&Instance::new("user-svc", "live", server.url()))
        .await
        .unwrap();
    // No retries at all: only a transparent retry can save a call that picks `dead`.
    let od = OutlierDetection {
        consecutive_local_origin_failure: None,
        consecutive_failure: None,
        ..OutlierDetection::default()
    };
    let users = OneShotClient::connect(
        ClientConfig::discover(Arc::new(table.clone()))
            .downstreams(Downstreams::new())
            .outlier_detection(od)
            .unwrap(),
    )
    .await
    .unwrap();
    for i in 0..10 {
        users.get_user(GetUserRequest { id: i }).await.unwrap();
    }
    let channel = users.core().channel();
    assert!(
        channel.attempts_to("dead").unwrap() >= 4,
        "round-robin picked it"
    );
    // Each call reached the server once, as a first attempt.
    assert_eq!(script.calls(), 10);
    assert!(script.seen().iter().all(|s| s.previous_attempts.is_none()));
    // The refused attempts recorded nothing in the breaker: ten successes, no failure.
    let counts = users.core().breaker().counts();
    assert_eq!((counts.requests, counts.failures), (10, 0));

    // With the local-origin rule on (the default), the first refusal ejects it.
    let users = OneShotClient::connect(
        ClientConfig::discover(Arc::new(table.clone())).downstreams(Downstreams::new()),
    )
    .await
    .unwrap();
    for i in 0..10 {
        users.get_user(GetUserRequest { id: i }).await.unwrap();
    }
    assert_eq!(users.core().channel().attempts_to("dead"), Some(1));
    assert_eq!(users.core().channel().ejected_ids(), ["dead"]);
}
