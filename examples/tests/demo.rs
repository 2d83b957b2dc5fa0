//! The demo with its phase results asserted: the full-length timeline on the embedded
//! registry (the one a user runs), then the shortened one over a real etcd and over a real
//! Nacos-protocol server.

use std::time::Duration;

use steadfast_examples::demo::{self, DemoOptions, LogBuffer, Report};

#[allow(dead_code)]
#[path = "../../tests/tests/common/etcd.rs"]
mod etcd;

#[allow(dead_code)]
#[path = "../../tests/tests/common/nacos.rs"]
mod nacos;

async fn run(registry: String, phase: Duration, logs: LogBuffer) -> Report {
    let opts = DemoOptions {
        phase,
        workers: 6,
        registry,
        progress: false,
    };
    let report = demo::run(opts, logs).await.expect("the demo runs");
    demo::print(&report);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_survives_its_timeline_on_memory_etcd_and_nacos() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    steadfast::telemetry::init_with_writer(move || writer.clone()).unwrap();

    let report = run("memory://".into(), demo::FULL_PHASE, logs.clone()).await;
    let [steady, kill, slow, down, restored] = &report.phases[..] else {
        panic!("five phases: {report:?}");
    };
    assert!(
        steady.calls > 50 && steady.success_pct() >= 99.0,
        "{steady:?}"
    );
    assert_eq!(
        kill.ok, kill.calls,
        "no call fails when a replica crashes: {kill:?}"
    );
    assert!(
        slow.calls > 0 && slow.success_pct() >= 95.0,
        "a slow replica is routed around: {slow:?}"
    );
    // Fully down: the breakers open and calls fail fast without reaching user-svc.
    assert!(
        down.transitions
            .iter()
            .any(|t| t.starts_with("user-svc->open")),
        "{down:?}"
    );
    // The breaker trips once failures outnumber the successes still in its window (2 s of
    // the previous phase's traffic), so the first half lets calls through; by the second
    // half only half-open probes reach user-svc.
    assert!(
        down.second_half_downstream_calls * 10 < down.second_half_calls as u64,
        "fail fast while open: {down:?}"
    );
    assert!(down.p99_ms < 500.0, "{down:?}");
    // Restored: half-open probes close the breakers and calls succeed again, fast.
    assert!(
        restored
            .transitions
            .iter()
            .any(|t| t.starts_with("user-svc->closed")),
        "{restored:?}"
    );
    assert!(
        restored.second_half_calls > 50 && restored.second_half_pct() >= 95.0,
        "the second half of the restored phase: {restored:?}"
    );
    // Hedged reads: a slow replica costs one hedging delay, not its latency.
    let reads = &report.reads;
    assert!(reads.plain.0 > 5 && reads.hedged.0 > 50, "{reads:?}");
    assert_eq!(reads.errors, 0, "{reads:?}");
    assert!(
        reads.plain.2 >= 300.0,
        "the slow replica shows without hedging: {reads:?}"
    );
    assert!(reads.hedged.2 < 100.0, "hedging hides it: {reads:?}");
    for r in &report.recovery {
        let after = r
            .after
            .unwrap_or_else(|| panic!("{} never recovered", r.hop));
        // user-svc's breakers (in order-svc) open for 1 s; the gateway's never opens.
        assert!(after <= Duration::from_secs(2), "{}: {after:?}", r.hop);
    }
    // Errors keep their origin: the gateway never blamed order-svc for user-svc's outage.
    for p in &report.phases {
        assert!(
            !p.transitions.iter().any(|t| t.starts_with("order-svc")),
            "the gateway's order-svc breaker moved: {p:?}"
        );
    }
    assert!(
        report.order_ejections.is_empty(),
        "healthy order-svc replicas were ejected: {:?}",
        report.order_ejections
    );
    for (who, state) in &report.final_breaker_states {
        assert_eq!(state, "closed", "{who} at the end");
    }
    // A stream opened on the replica that is killed lives through the kill: resumed
    // through discovery, with no id lost or repeated; a stream longer than its 1 s deadline
    // is cut at it.
    let st = &report.stream;
    assert!(st.received > 100 && st.resumed >= 1, "{st:?}");
    assert_eq!(st.gaps, 0, "{st:?}");
    let (after, code) = st.cut.expect("the deadline-bound stream ended");
    assert_eq!(code, tonic::Code::DeadlineExceeded, "{st:?}");
    assert!(
        after >= Duration::from_millis(950) && after <= Duration::from_millis(1200),
        "{st:?}"
    );
    // One request's log lines, from all three services, joined by trace id.
    let (_, lines) = report.trace.as_ref().expect("a traced request");
    for service in ["services::gateway", "services::order", "services::user"] {
        assert!(
            lines.iter().any(|l| l.contains(service)),
            "{service} in {lines:#?}"
        );
    }

    // The same system over a real etcd, and over Nacos.
    let etcd = etcd::Etcd::start().await;
    let nacos = nacos::Nacos::start().await;
    for (name, url) in [("etcd", etcd.url("")), ("nacos", nacos.url(""))] {
        let report = run(url, Duration::from_secs(2), logs.clone()).await;
        let steady = &report.phases[0];
        assert!(
            steady.calls > 50 && steady.success_pct() >= 99.0,
            "over {name}: {steady:?}"
        );
        assert_eq!(
            report.phases[1].ok, report.phases[1].calls,
            "over {name}: {:?}",
            report.phases[1]
        );
        let restored = &report.phases[4];
        assert!(
            restored.second_half_pct() >= 95.0,
            "over {name}, restored: {restored:?}"
        );
    }
}
