//! The behaviour every registry backend owes its users, run on each: the embedded memory
//! registry, a real etcd and a real Nacos-protocol server (rnacos). A service process is a
//! registry handle of its own; a crashed one is a process killed with SIGKILL (for memory:
//! a runtime that dies without deregistering).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::nacos::Nacos;
use steadfast::registry::{Instance, InstanceSet, Instances, MemoryRegistry, Registry};
use tokio::io::AsyncBufReadExt;
use tokio::time::{Instant, timeout};

enum Server {
    Memory(MemoryRegistry),
    Etcd(Etcd),
    Nacos(Nacos),
}

/// A process that registered an instance and holds it until killed.
enum Holder {
    Child(Child),
    Thread(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
}

impl Holder {
    /// Dies without deregistering.
    fn crash(self) {
        match self {
            Holder::Child(mut c) => {
                c.kill().unwrap();
                c.wait().unwrap();
            }
            Holder::Thread(stop, thread) => {
                stop.send(()).unwrap();
                thread.join().unwrap();
            }
        }
    }
}

impl Server {
    async fn start(kind: &str) -> Server {
        match kind {
            "memory" => Server::Memory(
                MemoryRegistry::new()
                    .with_ttl(Duration::from_secs(1))
                    .unwrap(),
            ),
            "etcd" => Server::Etcd(Etcd::start().await),
            "nacos" => Server::Nacos(Nacos::start().await),
            other => unreachable!("{other}"),
        }
    }

    fn url(&self) -> String {
        match self {
            Server::Memory(_) => unreachable!("in-process only"),
            Server::Etcd(e) => e.url("?ttl=2s"),
            Server::Nacos(n) => n.url(""),
        }
    }

    /// A registry handle as one service process has it.
    async fn registry(&self) -> Arc<dyn Registry> {
        match self {
            Server::Memory(m) => Arc::new(m.session()),
            _ => steadfast::registry::from_url(&self.url()).await.unwrap(),
        }
    }

    /// How long the server may take to drop a crashed process's registration.
    fn crash_timeout(&self) -> Duration {
        match self {
            // The lease TTL, and a little more.
            Server::Memory(_) => Duration::from_millis(2500),
            Server::Etcd(_) => Duration::from_millis(3500),
            // The process's connection closes with it.
            Server::Nacos(_) => Duration::from_secs(5),
        }
    }

    /// Starts a process that registers `instance` and holds it; returns once registered.
    async fn hold(&self, instance: &Instance) -> Holder {
        match self {
            Server::Memory(m) => {
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let (ready, registered) = tokio::sync::oneshot::channel();
                let (table, instance) = (m.session(), instance.clone());
                let thread = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(table.register(&instance)).unwrap();
                    ready.send(()).unwrap();
                    // Keep the keepalive task running until told to crash.
                    rt.block_on(async {
                        while stopped.try_recv().is_err() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    });
                    // The runtime, its keepalive task and the handle die here, unannounced.
                });
                registered.await.unwrap();
                Holder::Thread(stop, thread)
            }
            _ => {
                let mut child = Command::new(env!("CARGO_BIN_EXE_hold-registration"))
                    .args([&self.url(), &instance.service, &instance.id, &instance.addr])
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap();
                let stdout =
                    tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let line = timeout(Duration::from_secs(15), lines.next_line())
                    .await
                    .expect("the holder did not register within 15 s")
                    .unwrap();
                assert_eq!(line.as_deref(), Some("registered"));
                Holder::Child(child)
            }
        }
    }

    /// Stops the server (kill -9).
    fn stop(&mut self) {
        match self {
            Server::Memory(_) => unreachable!("no server"),
            Server::Etcd(e) => e.members[0].kill(),
            Server::Nacos(n) => n.kill(),
        }
    }

    async fn restart(&mut self) {
        match self {
            Server::Memory(_) => unreachable!("no server"),
            Server::Etcd(e) => e.restart(0).await,
            Server::Nacos(n) => n.restart().await,
        }
    }

    /// Writes malformed entries and one well-formed one for `service` behind the
    /// registry's back, as other (broken) clients would.
    async fn put_malformed(&self, service: &str) {
        match self {
            Server::Memory(_) => unreachable!("cannot hold malformed entries"),
            Server::Etcd(e) => {
                let mut c = e.client().await;
                let prefix = format!("/steadfast/services/{service}");
                c.put(format!("{prefix}/bad"), "{not json", None)
                    .await
                    .unwrap();
                c.put(
                    format!("{prefix}/noaddr"),
                    format!(r#"{{"id":"noaddr","service":"{service}","addr":"nowhere"}}"#),
                    None,
                )
                .await
                .unwrap();
                let good = Instance::new(service, "good", "http://127.0.0.1:7001");
                c.put(
                    format!("{prefix}/good"),
                    serde_json::to_string(&good).unwrap(),
                    None,
                )
                .await
                .unwrap();
            }
            Server::Nacos(n) => {
                // Over Nacos's HTTP API, as a Java service registers: a bad scheme, then a
                // good instance.
                for (port, metadata) in [
                    (7002, r#"{"steadfast.scheme":"ftp"}"#),
                    (7001, r#"{"steadfast.id":"good"}"#),
                ] {
                    let body = format!(
                        "serviceName={service}&ip=127.0.0.1&port={port}&ephemeral=false&metadata={}",
                        common::nacos::encode(metadata)
                    );
                    let (code, text) = n.http("POST", "/nacos/v1/ns/instance", &body).await;
                    assert_eq!(code, 200, "{text}");
                }
            }
        }
    }
}

/// Waits (up to `within`) until the watched set satisfies `f`; returns how long it took.
async fn until(
    set: &mut Instances,
    within: Duration,
    what: &str,
    f: impl Fn(&InstanceSet) -> bool,
) -> Duration {
    let started = Instant::now();
    let reached = timeout(within, set.wait_for(|s| f(s))).await.is_ok();
    assert!(
        reached,
        "{what}: not within {within:?}; the set is {:?}",
        ids(&set.borrow())
    );
    started.elapsed()
}

fn ids(set: &InstanceSet) -> Vec<String> {
    set.sorted()
        .into_iter()
        .filter(|i| !i.draining)
        .map(|i| i.id.clone())
        .collect()
}

async fn registration_is_visible_with_its_fields(kind: &str) {
    let server = Server::start(kind).await;
    let service = format!("visible-{kind}");
    let mut instance = Instance::new(service.as_str(), "v1", "http://127.0.0.1:7101");
    instance.zone = "eu-1a".into();
    instance.weight = 2;
    instance.metadata.insert("team".into(), "growth".into());
    let process = server.registry().await;
    let mut set = server.registry().await.watch(&service).await.unwrap();
    process.register(&instance).await.unwrap();
    until(&mut set, Duration::from_secs(5), "registered", |s| {
        s.len() == 1
    })
    .await;
    assert_eq!(
        set.borrow().get("v1"),
        Some(&instance),
        "every field comes back as written"
    );
    assert!(process.status().borrow().is_registered());
}

async fn a_crashed_process_is_gone_within_the_server_timeout(kind: &str) {
    let server = Server::start(kind).await;
    let service = format!("crash-{kind}");
    let mut set = server.registry().await.watch(&service).await.unwrap();
    let stays = server.registry().await;
    stays
        .register(&Instance::new(
            service.as_str(),
            "stays",
            "http://127.0.0.1:7201",
        ))
        .await
        .unwrap();
    let holder = server
        .hold(&Instance::new(
            service.as_str(),
            "crashes",
            "http://127.0.0.1:7202",
        ))
        .await;
    until(&mut set, Duration::from_secs(5), "both listed", |s| {
        ids(s).len() == 2
    })
    .await;
    holder.crash();
    let took = until(
        &mut set,
        server.crash_timeout(),
        "the crashed one gone",
        |s| ids(s) == ["stays"],
    )
    .await;
    eprintln!("{kind}: a crashed registration went in {took:?}");
}

async fn a_graceful_shutdown_deregisters_at_once(kind: &str) {
    let server = Server::start(kind).await;
    let service = format!("graceful-{kind}");
    let mut set = server.registry().await.watch(&service).await.unwrap();
    let process = server.registry().await;
    process
        .register(&Instance::new(
            service.as_str(),
            "g1",
            "http://127.0.0.1:7301",
        ))
        .await
        .unwrap();
    until(&mut set, Duration::from_secs(5), "listed", |s| {
        ids(s) == ["g1"]
    })
    .await;
    process.shutdown().await.unwrap();
    // Draining (or gone) for every watcher as soon as shutdown returns, well before any
    // lease or heartbeat timeout.
    until(
        &mut set,
        Duration::from_millis(500),
        "draining or gone",
        |s| ids(s).is_empty(),
    )
    .await;
    until(&mut set, Duration::from_secs(5), "gone", |s| s.is_empty()).await;
}

async fn a_registration_comes_back_after_the_server_restarts(kind: &str) {
    let mut server = Server::start(kind).await;
    let service = format!("restart-{kind}");
    let process = server.registry().await;
    process
        .register(&Instance::new(
            service.as_str(),
            "r1",
            "http://127.0.0.1:7401",
        ))
        .await
        .unwrap();
    server.stop();
    server.restart().await;
    // A new watcher (a client started after the restart) finds it again.
    let mut set = server.registry().await.watch(&service).await.unwrap();
    let took = until(&mut set, Duration::from_secs(20), "registered again", |s| {
        ids(s) == ["r1"]
    })
    .await;
    eprintln!("{kind}: registered again {took:?} after the restart");
    let mut status = process.status();
    timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.is_registered()),
    )
    .await
    .unwrap()
    .unwrap();
}

async fn the_watch_keeps_the_last_set_during_an_outage(kind: &str) {
    let mut server = Server::start(kind).await;
    let service = format!("outage-{kind}");
    let process = server.registry().await;
    process
        .register(&Instance::new(
            service.as_str(),
            "o1",
            "http://127.0.0.1:7501",
        ))
        .await
        .unwrap();
    let mut set = server.registry().await.watch(&service).await.unwrap();
    until(&mut set, Duration::from_secs(5), "listed", |s| {
        ids(s) == ["o1"]
    })
    .await;
    server.stop();
    // Three seconds without the server: the set never changes.
    let changed = timeout(Duration::from_secs(3), set.changed()).await;
    assert!(
        changed.is_err() || ids(&set.borrow()) == ["o1"],
        "the set changed during the outage: {:?}",
        ids(&set.borrow())
    );
    assert_eq!(ids(&set.borrow()), ["o1"]);
    server.restart().await;
    until(
        &mut set,
        Duration::from_secs(20),
        "still listed after the outage",
        |s| ids(s) == ["o1"],
    )
    .await;
}

async fn malformed_entries_are_skipped(kind: &str) {
    let server = Server::start(kind).await;
    let service = format!("malformed-{kind}");
    server.put_malformed(&service).await;
    let mut set = server.registry().await.watch(&service).await.unwrap();
    until(
        &mut set,
        Duration::from_secs(5),
        "the good one listed",
        |s| ids(s) == ["good"],
    )
    .await;
    assert_eq!(
        set.borrow().get("good").unwrap().addr,
        "http://127.0.0.1:7001"
    );
}

macro_rules! contract {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(stringify!($backend)).await;
                }
            )*
        }
    };
}

// The embedded registry has no server to lose or restart, and cannot hold malformed entries.
contract!(memory:
    registration_is_visible_with_its_fields,
    a_crashed_process_is_gone_within_the_server_timeout,
    a_graceful_shutdown_deregisters_at_once,
);
contract!(etcd:
    registration_is_visible_with_its_fields,
    a_crashed_process_is_gone_within_the_server_timeout,
    a_graceful_shutdown_deregisters_at_once,
    a_registration_comes_back_after_the_server_restarts,
    the_watch_keeps_the_last_set_during_an_outage,
    malformed_entries_are_skipped,
);
contract!(nacos:
    registration_is_visible_with_its_fields,
    a_crashed_process_is_gone_within_the_server_timeout,
    a_graceful_shutdown_deregisters_at_once,
    a_registration_comes_back_after_the_server_restarts,
    the_watch_keeps_the_last_set_during_an_outage,
    malformed_entries_are_skipped,
);
