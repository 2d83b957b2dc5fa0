//! The demo in its shortened mode, with its phase results asserted: first on the embedded
//! registry, then the same gateway -> order-svc -> user-svc path over a real etcd.

use std::time::Duration;

use steadfast_examples::demo::{self, DemoOptions, LogBuffer, Report};

#[allow(dead_code)]
#[path = "../../tests/tests/common/etcd.rs"]
mod etcd;

async fn run(registry: String, logs: LogBuffer) -> Report {
    let opts = DemoOptions {
        phase: Duration::from_secs(2),
        workers: 6,
        registry,
        progress: false,
    };
    let report = demo::run(opts, logs).await.expect("the demo runs");
    demo::print(&report);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_survives_its_timeline_on_memory_and_on_etcd() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    steadfast::telemetry::init_with_writer(move || writer.clone()).unwrap();

    let report = run("memory://".into(), logs.clone()).await;
    let [steady, kill, slow, down, restored] = &report.phases[..] else {
        panic!("five phases: {report:?}");
    };
    assert!(
        steady.calls > 50 && steady.success_pct() >= 99.0,
        "{steady:?}"
    );
    assert_eq!(
        kill.ok, kill.calls,
        "no call fails when a replica is killed: {kill:?}"
    );
    assert!(
        slow.calls > 0 && slow.success_pct() >= 95.0,
        "a slow replica is routed around: {slow:?}"
    );
    // Fully down: the breakers open and calls fail fast without reaching user-svc.
    assert!(
        down.transitions.iter().any(|t| t.starts_with("->open")),
        "{down:?}"
    );
    assert!(
        down.downstream_calls * 10 < down.calls as u64,
        "fail fast while open: {down:?}"
    );
    assert!(down.p99_ms < 500.0, "{down:?}");
    // Restored: half-open probes close the breakers and calls succeed again.
    assert!(
        restored
            .transitions
            .iter()
            .any(|t| t.starts_with("->closed")),
        "{restored:?}"
    );
    assert!(restored.ok > 0);
    // One request's log lines, from all three services, joined by trace id.
    let (_, lines) = report.trace.as_ref().expect("a traced request");
    for service in ["services::gateway", "services::order", "services::user"] {
        assert!(
            lines.iter().any(|l| l.contains(service)),
            "{service} in {lines:#?}"
        );
    }

    // The same system over a real etcd.
    let etcd = etcd::Etcd::start().await;
    let report = run(etcd.url(""), logs).await;
    let steady = &report.phases[0];
    assert!(
        steady.calls > 50 && steady.success_pct() >= 99.0,
        "over etcd: {steady:?}"
    );
    assert_eq!(
        report.phases[1].ok, report.phases[1].calls,
        "over etcd: {:?}",
        report.phases[1]
    );
}
