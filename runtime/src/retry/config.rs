//! gRPC service config JSON (`methodConfig`, `retryThrottling`, `loadBalancingConfig`), read
//! as grpc-go and grpc-java read it, so one policy file serves Go, Java and Rust clients.

use std::time::Duration;

use steadfast_spec::{FieldError, RetrySpec, ThrottleSpec};

use super::policy::MAX_ATTEMPTS_LIMIT;
use super::{HedgingPolicy, RetryPolicy, RetryThrottle};
use crate::Error;
use crate::code::CodeSet;
use crate::spec::json::Fields;
use crate::spec::outlier::OutlierDetection;

/// A parsed gRPC service config (gRPC's `doc/service_config.md`, the
/// `grpc.service_config.ServiceConfig` proto in its JSON form): per-method timeouts, retry
/// and hedging policies, message size limits and `waitForReady`; `retryThrottling`; and
/// `loadBalancingConfig`.
///
/// It reads what grpc-go and grpc-java read, so one file serves Go, Java and Rust clients:
/// - field names in lowerCamel (`maxAttempts`), as the proto spells them (`max_attempts`),
///   or in any case (`MaxAttempts`, as grpc-go's own retry example writes them);
/// - durations in the proto JSON form (`"1s"`, `"1.5s"`, `".01s"`), and steadfast's
///   friendly form (`"250ms"`) as an extension;
/// - status codes by name (`"UNAVAILABLE"`) or number (`14`);
/// - `methodConfig[].name` entries for one method, a whole service, or everything (`{}`),
///   the most specific one winning.
///
/// Values follow gRFC A6: `maxAttempts` above 5 is clamped to 5 with a warning; then the
/// policy passes the same checks as [`RetryPolicy::builder`] and `#[resilient_client]`, so a
/// never-retryable code in `retryableStatusCodes`, a missing field, a non-positive backoff or
/// a `perAttemptRecvTimeout` over 1 day is an error that names the field by its JSON path. A
/// method config with both `retryPolicy` and `hedgingPolicy` is an error (A6 allows one).
/// Unknown fields are ignored with a `warn!` naming their path. `loadBalancingConfig` may
/// hold gRFC A50's `outlier_detection` (or `outlier_detection_experimental`) entry, which
/// configures the client's [`OutlierDetection`](crate::discovery::OutlierDetection);
/// `round_robin` is what steadfast does anyway, and `pick_first` is read but not followed
/// (steadfast balances round-robin over instances in good standing), with a warning.
///
/// A client takes its service config from [`ClientConfig::service_config`] (read with
/// [`ServiceConfig::from_json`] or [`ServiceConfig::from_file`]) and, when it discovers its
/// instances in a registry, from the registry ([`Registry::put_config`]), live: the
/// registry's config, while there is one, replaces the local one, and a value that does
/// not parse is refused while the last good one stays in force.
///
/// [`Registry::put_config`]: crate::registry::Registry::put_config
/// [`ClientConfig::service_config`]: crate::client::ClientConfig::service_config
///
/// `hedgingPolicy` hedges the method's calls ([`HedgingPolicy`]), except for methods marked
/// `#[no_retry]`, which are not idempotent. Not applied yet: `waitForReady` and the message
/// size limits are read for [`MethodConfig`] but the client takes its limits from
/// [`ClientConfig`](crate::client::ClientConfig).
///
/// ```
/// use std::time::Duration;
/// use steadfast::retry::ServiceConfig;
///
/// let config = ServiceConfig::from_json(r#"{
///   "methodConfig": [{
///     "name": [{"service": "user.UserService", "method": "GetUser"}],
///     "timeout": "2s",
///     "retryPolicy": {
///       "maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s",
///       "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
///     }
///   }],
///   "retryThrottling": {"maxTokens": 20, "tokenRatio": 0.2}
/// }"#)?;
/// let m = config.lookup("user.UserService", "GetUser").unwrap();
/// assert_eq!(m.timeout, Some(Duration::from_secs(2)));
/// assert_eq!(m.retry.unwrap().max_attempts(), 4);
/// assert!(config.lookup("user.UserService", "CreateUser").is_none());
/// assert_eq!(config.throttle().unwrap().max_tokens(), 20);
///
/// // grpc-go's casing and durations parse to the same policy.
/// let go = ServiceConfig::from_json(r#"{"methodConfig": [{"name": [{"service": "user.UserService"}],
///   "retryPolicy": {"MaxAttempts": 4, "InitialBackoff": ".05s", "MaxBackoff": "1s",
///   "BackoffMultiplier": 2.0, "RetryableStatusCodes": ["UNAVAILABLE", 8]}}]}"#)?;
/// assert_eq!(go.lookup("user.UserService", "GetUser").unwrap().retry, m.retry);
///
/// let err = ServiceConfig::from_json(r#"{"methodConfig":[{"name":[{}],
///   "retryPolicy":{"maxAttempts":3,"initialBackoff":"0s","maxBackoff":"1s",
///   "backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}"#).unwrap_err();
/// assert!(err.to_string().contains("methodConfig[0].retryPolicy.initialBackoff"));
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServiceConfig {
    methods: Vec<MethodConfig>,
    throttling: Option<ThrottleSpec>,
    outlier_detection: Option<OutlierDetection>,
}

/// The settings of one `methodConfig` entry.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MethodConfig {
    /// The names this entry applies to.
    pub names: Vec<MethodName>,
    /// The overall deadline per call.
    pub timeout: Option<Duration>,
    /// The retry policy, if the entry has one.
    pub retry: Option<RetryPolicy>,
    /// The hedging policy, if the entry has one.
    pub hedging: Option<HedgingPolicy>,
    /// `waitForReady`.
    pub wait_for_ready: Option<bool>,
    /// `maxRequestMessageBytes`.
    pub max_request_message_bytes: Option<u64>,
    /// `maxResponseMessageBytes`.
    pub max_response_message_bytes: Option<u64>,
}

/// A `methodConfig` name: empty `service` matches every service; empty `method` every method.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodName {
    /// Fully qualified gRPC service name (`user.UserService`), or empty.
    pub service: String,
    /// gRPC method name (`GetUser`), or empty.
    pub method: String,
}

fn err(path: impl std::fmt::Display, what: impl std::fmt::Display) -> Error {
    Error::ServiceConfig(format!("`{path}` {what}"))
}

/// The first error of a spec's `validate`, at its JSON path: `json_key` names the field the
/// way the JSON spells it.
fn spec_error(
    at: &str,
    errors: Vec<FieldError>,
    json_key: impl Fn(&'static str) -> &'static str,
) -> Error {
    match errors.into_iter().next() {
        Some(e) => Error::ServiceConfig(format!("`{at}{}`: {}", json_key(e.field), e.message)),
        None => err(at, "is invalid"),
    }
}

/// A required field.
fn required<T>(f: &Fields<'_>, camel: &str, v: Option<T>) -> Result<T, Error> {
    v.ok_or_else(|| err(f.at(camel), "is required"))
}

/// A list of status codes, by name or number.
fn codes(f: &Fields<'_>, camel: &str) -> Result<Option<CodeSet>, Error> {
    let Some(v) = f.get(camel) else {
        return Ok(None);
    };
    let list = v
        .as_array()
        .ok_or_else(|| err(f.at(camel), format!("is {v}; write a list of status codes")))?;
    let names: Vec<String> = list
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    CodeSet::parse_names(&names)
        .map(Some)
        .map_err(|why| err(f.at(camel), why))
}

/// `maxAttempts`, clamped to A6's limit with a warning.
fn max_attempts(f: &Fields<'_>) -> Result<u32, Error> {
    let n = required(f, "maxAttempts", f.uint("maxAttempts")?)?;
    if n > u64::from(MAX_ATTEMPTS_LIMIT) {
        tracing::warn!(
            field = %f.at("maxAttempts"), value = n,
            "maxAttempts above {MAX_ATTEMPTS_LIMIT} is clamped to {MAX_ATTEMPTS_LIMIT} (gRFC A6)"
        );
        return Ok(MAX_ATTEMPTS_LIMIT);
    }
    Ok(n as u32)
}

impl ServiceConfig {
    /// Parses and validates service config JSON.
    pub fn from_json(json: &str) -> Result<ServiceConfig, Error> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::ServiceConfig(format!("not valid service config JSON: {e}")))?;
        let top = Fields::new("", &value)?;
        let methods = match top.get("methodConfig") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .ok_or_else(|| err("methodConfig", format!("is {v}; write a list")))?
                .iter()
                .enumerate()
                .map(|(i, m)| parse_method(&format!("methodConfig[{i}]"), m))
                .collect::<Result<_, _>>()?,
        };
        let throttling = top
            .get("retryThrottling")
            .map(|v| {
                let t = Fields::new("retryThrottling", v)?;
                let spec = ThrottleSpec {
                    max_tokens: {
                        let n = required(&t, "maxTokens", t.uint("maxTokens")?)?;
                        u32::try_from(n).map_err(|_| err(t.at("maxTokens"), "is too large"))?
                    },
                    token_ratio: required(&t, "tokenRatio", t.number("tokenRatio")?)?,
                };
                t.warn_unknown();
                RetryThrottle::from_spec(spec).map_err(|errors| {
                    spec_error("retryThrottling.", errors, |field| match field {
                        "throttle.max_tokens" => "maxTokens",
                        "throttle.token_ratio" => "tokenRatio",
                        other => other,
                    })
                })?;
                Ok::<_, Error>(spec)
            })
            .transpose()?;
        let outlier_detection = match top.get("loadBalancingConfig") {
            Some(list) => OutlierDetection::from_lb_config(list)?,
            None => None,
        };
        // Read by other gRPC clients; nothing for steadfast to do with them.
        for other in ["loadBalancingPolicy", "healthCheckConfig"] {
            let _ = top.get(other);
        }
        top.warn_unknown();
        Ok(ServiceConfig {
            methods,
            throttling,
            outlier_detection,
        })
    }

    /// Reads and parses a service config file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<ServiceConfig, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading service config {}", path.display()),
            source,
        })?;
        Self::from_json(&text)
    }

    /// The entry for `service`/`method`, most specific first: an exact name, then the
    /// service's default, then the global default.
    pub fn lookup(&self, service: &str, method: &str) -> Option<&MethodConfig> {
        let find = |pred: &dyn Fn(&MethodName) -> bool| {
            self.methods.iter().find(|m| m.names.iter().any(pred))
        };
        find(&|n| n.service == service && n.method == method)
            .or_else(|| find(&|n| n.service == service && n.method.is_empty()))
            .or_else(|| find(&|n| n.service.is_empty() && n.method.is_empty()))
    }

    /// The outlier detection of `loadBalancingConfig`, if the config has one.
    pub fn outlier_detection(&self) -> Option<&OutlierDetection> {
        self.outlier_detection.as_ref()
    }

    /// A fresh throttle from `retryThrottling`, if the config has one.
    pub fn throttle(&self) -> Option<RetryThrottle> {
        self.throttling
            .map(|spec| RetryThrottle::from_spec(spec).expect("validated in from_json"))
    }
}

fn parse_name(path: &str, v: &serde_json::Value) -> Result<MethodName, Error> {
    let f = Fields::new(path, v)?;
    let name = MethodName {
        service: f.string("service")?.unwrap_or_default().to_owned(),
        method: f.string("method")?.unwrap_or_default().to_owned(),
    };
    f.warn_unknown();
    if name.service.is_empty() && !name.method.is_empty() {
        return Err(err(
            path,
            "has a method but no service; a method name needs its service",
        ));
    }
    Ok(name)
}

fn parse_method(path: &str, v: &serde_json::Value) -> Result<MethodConfig, Error> {
    let f = Fields::new(path, v)?;
    let names = match f.get("name") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .ok_or_else(|| err(f.at("name"), format!("is {list}; write a list of names")))?
            .iter()
            .enumerate()
            .map(|(j, n)| parse_name(&format!("{}[{j}]", f.at("name")), n))
            .collect::<Result<_, _>>()?,
    };
    let timeout = f.duration("timeout")?;
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(err(f.at("timeout"), "must be greater than zero"));
    }
    let retry = f
        .get("retryPolicy")
        .map(|p| parse_retry(&f.at("retryPolicy"), p))
        .transpose()?;
    let hedging = f
        .get("hedgingPolicy")
        .map(|p| parse_hedging(&f.at("hedgingPolicy"), p))
        .transpose()?;
    if retry.is_some() && hedging.is_some() {
        return Err(err(
            path,
            "has both retryPolicy and hedgingPolicy; gRFC A6 allows one per method",
        ));
    }
    let config = MethodConfig {
        names,
        timeout,
        retry,
        hedging,
        wait_for_ready: f.boolean("waitForReady")?,
        max_request_message_bytes: f.uint("maxRequestMessageBytes")?,
        max_response_message_bytes: f.uint("maxResponseMessageBytes")?,
    };
    f.warn_unknown();
    Ok(config)
}

fn parse_retry(at: &str, v: &serde_json::Value) -> Result<RetryPolicy, Error> {
    let f = Fields::new(at, v)?;
    let max_attempts = max_attempts(&f)?;
    let spec = RetrySpec {
        max_attempts,
        initial_backoff: required(&f, "initialBackoff", f.duration("initialBackoff")?)?,
        max_backoff: required(&f, "maxBackoff", f.duration("maxBackoff")?)?,
        multiplier: required(&f, "backoffMultiplier", f.number("backoffMultiplier")?)?,
        per_attempt_timeout: f.duration("perAttemptRecvTimeout")?,
        retryable_codes: required(
            &f,
            "retryableStatusCodes",
            codes(&f, "retryableStatusCodes")?,
        )?
        .to_spec(),
    };
    f.warn_unknown();
    RetryPolicy::from_spec(spec).map_err(|errors| {
        let e = errors.into_iter().next();
        match e {
            Some(e) => {
                let camel = match e.field {
                    "max_attempts" => "maxAttempts",
                    "initial_backoff" => "initialBackoff",
                    "max_backoff" => "maxBackoff",
                    "backoff_multiplier" => "backoffMultiplier",
                    "per_attempt_timeout" => "perAttemptRecvTimeout",
                    "retryable_codes" => "retryableStatusCodes",
                    other => other,
                };
                Error::ServiceConfig(format!("`{}`: {}", f.at(camel), e.message))
            }
            None => err(at, "is invalid"),
        }
    })
}

fn parse_hedging(at: &str, v: &serde_json::Value) -> Result<HedgingPolicy, Error> {
    let f = Fields::new(at, v)?;
    let spec = steadfast_spec::HedgeSpec {
        max_attempts: max_attempts(&f)?,
        delay: f.duration("hedgingDelay")?.unwrap_or_default(),
        non_fatal_codes: codes(&f, "nonFatalStatusCodes")?
            .unwrap_or_default()
            .to_spec(),
    };
    f.warn_unknown();
    HedgingPolicy::from_spec(spec).map_err(|errors| match errors.into_iter().next() {
        Some(e) => {
            let camel = match e.field {
                "hedge.max_attempts" => "maxAttempts",
                "hedge.delay" => "hedgingDelay",
                "hedge.non_fatal_codes" => "nonFatalStatusCodes",
                other => other,
            };
            Error::ServiceConfig(format!("`{}`: {}", f.at(camel), e.message))
        }
        None => err(at, "is invalid"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(body: &str) -> Result<ServiceConfig, Error> {
        ServiceConfig::from_json(&format!(
            r#"{{"methodConfig":[{{"name":[{{"service":"s"}}],"retryPolicy":{body}}}]}}"#
        ))
    }

    const OK: &str = r#"{"maxAttempts":3,"initialBackoff":"0.1s","maxBackoff":"1s",
        "backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}"#;

    #[test]
    fn clamps_max_attempts_to_five() {
        let cfg = policy(&OK.replace("\"maxAttempts\":3", "\"maxAttempts\":9")).unwrap();
        let m = cfg.lookup("s", "Any").unwrap();
        assert_eq!(m.retry.unwrap().max_attempts(), 5);
    }

    #[test]
    fn rejects_never_retryable_and_missing_fields() {
        let e = policy(&OK.replace("\"UNAVAILABLE\"", "\"UNAVAILABLE\",\"NOT_FOUND\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retryableStatusCodes") && e.contains("NotFound"),
            "{e}"
        );
        let e = policy(&OK.replace("\"maxBackoff\":\"1s\",", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("methodConfig[0].retryPolicy.maxBackoff"), "{e}");
        let e = policy(&OK.replace("\"backoffMultiplier\":2", "\"backoffMultiplier\":0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("backoffMultiplier"), "{e}");
        let e = policy(&OK.replace("\"maxAttempts\":3", "\"maxAttempts\":1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("maxAttempts"), "{e}");
        assert!(ServiceConfig::from_json("{not json").is_err());
        let e = ServiceConfig::from_json(r#"{"retryThrottling":{"maxTokens":0,"tokenRatio":1}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("maxTokens"), "{e}");
    }

    /// Service config runs the same checks as the builder and the macro, after the A6 clamp.
    #[test]
    fn runs_the_spec_checks() {
        let e = |body: String| policy(&body).unwrap_err().to_string();
        let day = OK.replace(
            "\"maxAttempts\":3",
            "\"maxAttempts\":3,\"perAttemptRecvTimeout\":\"24.5h\"",
        );
        let got = e(day);
        assert!(
            got.contains("`methodConfig[0].retryPolicy.perAttemptRecvTimeout`")
                && got.contains("longer than 1 day"),
            "{got}"
        );
        let ok = OK.replace(
            "\"maxAttempts\":3",
            "\"maxAttempts\":3,\"perAttemptRecvTimeout\":\"24h\"",
        );
        assert!(policy(&ok).is_ok());
        let got = e(OK.replace("\"maxBackoff\":\"1s\"", "\"maxBackoff\":\"0s\""));
        assert!(
            got.contains("`methodConfig[0].retryPolicy.maxBackoff`"),
            "{got}"
        );
        let got = e(OK.replace("\"UNAVAILABLE\"", "\"OK\""));
        assert!(
            got.contains("retryableStatusCodes") && got.contains("`Ok`"),
            "{got}"
        );
        // The clamp comes first: 9 attempts are 5, and the result equals the builder's.
        let cfg = policy(&OK.replace("\"maxAttempts\":3", "\"maxAttempts\":9")).unwrap();
        let built = RetryPolicy::builder().max_attempts(5).build().unwrap();
        assert_eq!(cfg.lookup("s", "M").unwrap().retry, Some(built));
        let got =
            ServiceConfig::from_json(r#"{"retryThrottling":{"maxTokens":10,"tokenRatio":0.0001}}"#)
                .unwrap_err()
                .to_string();
        assert!(got.contains("`retryThrottling.tokenRatio`"), "{got}");
    }

    #[test]
    fn lookup_prefers_the_most_specific_name() {
        let cfg = ServiceConfig::from_json(
            r#"{"methodConfig":[
                {"name":[{}],"timeout":"9s"},
                {"name":[{"service":"a"}],"timeout":"2s"},
                {"name":[{"service":"a","method":"M"}],"timeout":"1s"}]}"#,
        )
        .unwrap();
        let t = |s, m| cfg.lookup(s, m).unwrap().timeout.unwrap().as_secs();
        assert_eq!(t("a", "M"), 1);
        assert_eq!(t("a", "N"), 2);
        assert_eq!(t("b", "M"), 9);
    }
}
