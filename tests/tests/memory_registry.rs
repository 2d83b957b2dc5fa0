//! `memory://` liveness: registrations are held by a lease that a keepalive task renews on
//! the registering process's runtime, exactly like etcd's. A crash (the runtime dies without
//! deregistering) or a freeze longer than the TTL ends the registration within the TTL; a
//! frozen process that wakes registers again; `shutdown` revokes at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use steadfast::registry::{Instance, Instances, MemoryRegistry, Registry};
use steadfast_examples::run::Process;

const TTL: Duration = Duration::from_millis(300);

fn ids(rx: &Instances) -> Vec<String> {
    rx.borrow().iter().map(|i| i.id.clone()).collect()
}

/// Waits for the next change of the watched set that satisfies `f`, for at most `within`.
async fn until(rx: &mut Instances, within: Duration, f: impl Fn(&[String]) -> bool) -> bool {
    tokio::time::timeout(within, async {
        while !f(&ids(rx)) {
            rx.changed().await.expect("the registry lives");
        }
    })
    .await
    .is_ok()
}

/// Registers `id` from a process of its own on `table`.
async fn registered_process(table: &MemoryRegistry, id: &str) -> (Process, MemoryRegistry) {
    let session = table.session().with_ttl(TTL).unwrap();
    let (reg, id) = (session.clone(), id.to_owned());
    let (process, ()) = Process::start(&id.clone(), move || async move {
        let instance = Instance::new("svc", id, "http://127.0.0.1:1");
        reg.register(&instance).await?;
        Ok(())
    })
    .await
    .unwrap();
    (process, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_process_leaves_within_its_ttl_and_a_live_one_stays() {
    let table = MemoryRegistry::new();
    let mut rx = table.watch("svc").await.unwrap();
    // The handles stay alive here; only the crashed process's keepalive task dies.
    let (mut crashing, _crashing_handle) = registered_process(&table, "crashes").await;
    let (_living, _living_handle) = registered_process(&table, "lives").await;
    assert!(until(&mut rx, TTL, |ids| ids.len() == 2).await);

    // Several TTLs pass: the keepalive holds both.
    let held = until(&mut rx, TTL * 4, |ids| ids.len() != 2).await;
    assert!(!held, "live registrations expired: {:?}", ids(&rx));

    let killed = Instant::now();
    crashing.kill();
    assert_eq!(ids(&rx).len(), 2, "a crash deregisters nothing by itself");
    assert!(
        until(&mut rx, TTL * 2, |ids| ids == ["lives"]).await,
        "the crashed instance is gone within the TTL: {:?}",
        ids(&rx)
    );
    let gone_after = killed.elapsed();
    assert!(
        gone_after >= TTL / 2 && gone_after <= TTL + Duration::from_millis(150),
        "gone {gone_after:?} after the crash, TTL {TTL:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_process_expires_then_registers_again_when_it_wakes() {
    let table = MemoryRegistry::new();
    let mut rx = table.watch("svc").await.unwrap();
    let (process, _session) = registered_process(&table, "frozen").await;
    assert!(until(&mut rx, TTL, |ids| ids == ["frozen"]).await);
    // Frozen for three TTLs, like SIGSTOP: its keepalive cannot run.
    let freeze = process.freeze(TTL * 3);
    let watch = async {
        let expired = until(&mut rx, TTL * 2, |ids| ids.is_empty()).await;
        let back = until(&mut rx, TTL * 3, |ids| ids == ["frozen"]).await;
        (expired, back)
    };
    let ((expired, back), ()) = tokio::join!(watch, freeze);
    assert!(
        expired,
        "the registration expired while the process was frozen"
    );
    assert!(back, "registered again once it woke: {:?}", ids(&rx));
}

#[tokio::test]
async fn shutdown_revokes_every_registration_of_the_lease_at_once() {
    let table = MemoryRegistry::new();
    let mut rx = table.watch("svc").await.unwrap();
    let a = table.session();
    let b: Arc<dyn Registry> = Arc::new(table.session());
    a.register(&Instance::new("svc", "a1", "http://127.0.0.1:1"))
        .await
        .unwrap();
    a.register(&Instance::new("svc", "a2", "http://127.0.0.1:2"))
        .await
        .unwrap();
    b.register(&Instance::new("svc", "b1", "http://127.0.0.1:3"))
        .await
        .unwrap();
    assert!(until(&mut rx, TTL, |ids| ids.len() == 3).await);
    a.shutdown().await.unwrap();
    assert_eq!(ids(&rx), ["b1"]);
}

#[tokio::test]
async fn a_bad_memory_url_names_the_option() {
    let err = steadfast::registry::from_url("memory://?ttl=1ms")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ttl"), "{err}");
    let err = steadfast::registry::from_url("memory://?color=red")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("color=red"), "{err}");
    let ok = steadfast::registry::from_url("memory://?ttl=2s").await;
    assert!(ok.is_ok());
}
