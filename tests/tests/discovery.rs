//! Discovery over the embedded registry with real servers on 127.0.0.1: replicas come and
//! go under load and no call fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::replicas::{burst, client, start};
use steadfast::registry::{MemoryRegistry, Registry};
use steadfast_examples::pb::user::GetUserRequest;

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
