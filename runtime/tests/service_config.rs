//! Service config as grpc-go and grpc-java read it: the published examples (see
//! `tests/service-config/README.md` for their sources) parse, and their spellings in other
//! casings parse to the same config.

use std::time::Duration;

use steadfast::retry::{RetryPolicy, ServiceConfig};
use tonic::Code;

fn load(name: &str) -> ServiceConfig {
    let path = format!("{}/tests/service-config/{name}", env!("CARGO_MANIFEST_DIR"));
    ServiceConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn grpc_gos_retry_example_parses_as_its_lower_camel_form() {
    let go = load("grpc-go-retry-example.json");
    let camel = load("grpc-go-retry-example.lower-camel.json");
    let m = go.lookup("grpc.examples.echo.Echo", "UnaryEcho").unwrap();
    let expected = RetryPolicy::builder()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(10))
        .multiplier(1.0)
        .retry_on([Code::Unavailable])
        .build()
        .unwrap();
    assert_eq!(m.retry, Some(expected));
    assert_eq!(m.wait_for_ready, Some(true));
    assert_eq!(
        camel.lookup("grpc.examples.echo.Echo", "UnaryEcho"),
        Some(m)
    );
}

#[test]
fn a6s_examples_parse_in_json_and_proto_names() {
    let a6 = load("a6-retry.json");
    let proto = load("a6-retry.proto-names.json");
    let m = a6.lookup("grpc.testing.TestService", "UnaryCall").unwrap();
    let retry = m.retry.unwrap();
    assert_eq!(retry.max_attempts(), 4);
    assert_eq!(
        proto.lookup("grpc.testing.TestService", "UnaryCall"),
        Some(m)
    );
    let (t1, t2) = (a6.throttle().unwrap(), proto.throttle().unwrap());
    assert_eq!((t1.max_tokens(), t1.token_ratio()), (10, 0.1));
    assert_eq!((t2.max_tokens(), t2.token_ratio()), (10, 0.1));

    let hedging = load("a6-hedging.json");
    let h = hedging
        .lookup("grpc.testing.TestService", "UnaryCall")
        .unwrap()
        .hedging
        .unwrap();
    assert_eq!(h.max_attempts, 4);
    assert_eq!(h.hedging_delay, Duration::from_millis(500));
    for code in [Code::Unavailable, Code::Internal, Code::Aborted] {
        assert!(h.non_fatal_codes.contains(code), "{code:?}");
    }
}

#[test]
fn mistakes_name_their_json_path() {
    let err = |json: &str| ServiceConfig::from_json(json).unwrap_err().to_string();
    let both = err(r#"{"methodConfig": [{"name": [{}],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        "hedgingPolicy": {"maxAttempts": 2}}]}"#);
    assert!(
        both.contains("methodConfig[0]") && both.contains("retryPolicy and hedgingPolicy"),
        "{both}"
    );
    // Missing, in grpc-go's casing: the path says it the way the file does.
    let missing = err(r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"MaxAttempts": 3}}]}"#);
    assert!(
        missing.contains("methodConfig[0].retryPolicy.initialBackoff"),
        "{missing}"
    );
    let twice = err(
        r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"MaxAttempts": 3, "max_attempts": 3}}]}"#,
    );
    assert!(
        twice.contains("MaxAttempts") && twice.contains("max_attempts"),
        "{twice}"
    );
    let decimals = err(r#"{"methodConfig": [{"name": [{}], "timeout": "0.0000000001s"}]}"#);
    assert!(decimals.contains("methodConfig[0].timeout"), "{decimals}");
    let one = err(r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 1}}]}"#);
    assert!(one.contains("hedgingPolicy.maxAttempts"), "{one}");
    let code = err(
        r#"{"methodConfig": [{"name": [{}], "hedgingPolicy": {"maxAttempts": 2, "nonFatalStatusCodes": ["SOMETIMES"]}}]}"#,
    );
    assert!(code.contains("hedgingPolicy.nonFatalStatusCodes"), "{code}");
}

#[test]
fn the_first_load_balancing_policy_steadfast_knows_is_the_one_used() {
    let od = ServiceConfig::from_json(
        r#"{"loadBalancingConfig": [{"weighted_target_experimental": {}},
            {"outlier_detection": {"interval": "2s", "childPolicy": [{"round_robin": {}}]}},
            {"round_robin": {}}]}"#,
    )
    .unwrap();
    assert_eq!(
        od.outlier_detection().unwrap().interval,
        Duration::from_secs(2)
    );
    let rr = ServiceConfig::from_json(
        r#"{"loadBalancingConfig": [{"round_robin": {}}, {"outlier_detection": {}}]}"#,
    )
    .unwrap();
    assert!(rr.outlier_detection().is_none(), "round_robin comes first");
}
