//! gRPC service config JSON (`methodConfig[].retryPolicy`, `retryThrottling`), so one policy
//! file serves Go, Java and Rust clients alike.

use std::time::Duration;

use serde::Deserialize;
use steadfast_spec::{FieldError, RetrySpec, ThrottleSpec};

use super::policy::MAX_ATTEMPTS_LIMIT;
use super::{RetryPolicy, RetryThrottle};
use crate::Error;
use crate::code::CodeSet;
use crate::spec::outlier::OutlierDetection;

/// A parsed gRPC service config: per-method timeouts and retry policies, and throttling.
///
/// `loadBalancingConfig` may hold gRFC A50's `outlier_detection` (or
/// `outlier_detection_experimental`) entry, which configures the client's
/// [`OutlierDetection`](crate::discovery::OutlierDetection). Fields that steadfast does not
/// use (`waitForReady`, ...) are ignored, so the same file can configure clients in other
/// languages. Values follow gRFC A6:
/// `maxAttempts` above 5 is clamped to 5 with a warning; then the policy passes the same
/// checks as [`RetryPolicy::builder`] and `#[resilient_client]`, so a never-retryable code in
/// `retryableStatusCodes`, a missing field, a non-positive backoff or a
/// `perAttemptRecvTimeout` over 1 day is an error that names the field by its JSON path.
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
}

/// A `methodConfig` name: empty `service` matches every service; empty `method` every method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct MethodName {
    /// Fully qualified gRPC service name (`user.UserService`), or empty.
    pub service: String,
    /// gRPC method name (`GetUser`), or empty.
    pub method: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    method_config: Vec<RawMethodConfig>,
    retry_throttling: Option<RawThrottling>,
    load_balancing_config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMethodConfig {
    #[serde(default)]
    name: Vec<MethodName>,
    timeout: Option<String>,
    retry_policy: Option<RawRetryPolicy>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRetryPolicy {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    backoff_multiplier: Option<f64>,
    retryable_status_codes: Option<Vec<serde_json::Value>>,
    per_attempt_recv_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawThrottling {
    max_tokens: Option<u32>,
    token_ratio: Option<f64>,
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

/// A duration; zero is refused by the checks that follow, or by `positive`.
fn duration(path: &str, text: &str) -> Result<Duration, Error> {
    crate::duration::parse(text).map_err(|why| err(path, why))
}

/// A duration above zero, for `timeout`, which no spec covers.
fn positive(path: &str, text: &str) -> Result<Duration, Error> {
    let d = duration(path, text)?;
    if d.is_zero() {
        return Err(err(path, "must be greater than zero"));
    }
    Ok(d)
}

impl ServiceConfig {
    /// Parses and validates service config JSON.
    pub fn from_json(json: &str) -> Result<ServiceConfig, Error> {
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|e| Error::ServiceConfig(format!("not valid service config JSON: {e}")))?;
        let methods = raw
            .method_config
            .into_iter()
            .enumerate()
            .map(|(i, m)| parse_method(i, m))
            .collect::<Result<_, _>>()?;
        let throttling = raw
            .retry_throttling
            .map(|t| {
                let spec = ThrottleSpec {
                    max_tokens: t
                        .max_tokens
                        .ok_or_else(|| err("retryThrottling.maxTokens", "is required"))?,
                    token_ratio: t
                        .token_ratio
                        .ok_or_else(|| err("retryThrottling.tokenRatio", "is required"))?,
                };
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
        let outlier_detection = match &raw.load_balancing_config {
            Some(list) => OutlierDetection::from_lb_config(list)?,
            None => None,
        };
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

fn parse_method(i: usize, raw: RawMethodConfig) -> Result<MethodConfig, Error> {
    let at = |field: &str| format!("methodConfig[{i}].{field}");
    for (j, name) in raw.name.iter().enumerate() {
        if name.service.is_empty() && !name.method.is_empty() {
            return Err(err(
                at(&format!("name[{j}]")),
                "has a method but no service; a method name needs its service",
            ));
        }
    }
    let timeout = raw
        .timeout
        .as_deref()
        .map(|t| positive(&at("timeout"), t))
        .transpose()?;
    let retry = raw
        .retry_policy
        .map(|p| parse_retry(&at("retryPolicy"), p))
        .transpose()?;
    Ok(MethodConfig {
        names: raw.name,
        timeout,
        retry,
    })
}

fn parse_retry(at: &str, raw: RawRetryPolicy) -> Result<RetryPolicy, Error> {
    let field = |f: &str| format!("{at}.{f}");
    let required = |f: &str| err(field(f), "is required");
    let mut max_attempts = raw.max_attempts.ok_or_else(|| required("maxAttempts"))?;
    if max_attempts > MAX_ATTEMPTS_LIMIT {
        tracing::warn!(
            field = %field("maxAttempts"), value = max_attempts,
            "maxAttempts above {MAX_ATTEMPTS_LIMIT} is clamped to {MAX_ATTEMPTS_LIMIT} (gRFC A6)"
        );
        max_attempts = MAX_ATTEMPTS_LIMIT;
    }
    let initial = raw
        .initial_backoff
        .ok_or_else(|| required("initialBackoff"))?;
    let max = raw.max_backoff.ok_or_else(|| required("maxBackoff"))?;
    let multiplier = raw
        .backoff_multiplier
        .ok_or_else(|| required("backoffMultiplier"))?;
    let codes = raw
        .retryable_status_codes
        .ok_or_else(|| required("retryableStatusCodes"))?;
    let names: Vec<String> = codes
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let codes =
        CodeSet::parse_names(&names).map_err(|why| err(field("retryableStatusCodes"), why))?;
    let spec = RetrySpec {
        max_attempts,
        initial_backoff: duration(&field("initialBackoff"), &initial)?,
        max_backoff: duration(&field("maxBackoff"), &max)?,
        multiplier,
        per_attempt_timeout: raw
            .per_attempt_recv_timeout
            .as_deref()
            .map(|t| duration(&field("perAttemptRecvTimeout"), t))
            .transpose()?,
        retryable_codes: codes.to_spec(),
    };
    RetryPolicy::from_spec(spec).map_err(|errors| {
        spec_error(&format!("{at}."), errors, |f| match f {
            "max_attempts" => "maxAttempts",
            "initial_backoff" => "initialBackoff",
            "max_backoff" => "maxBackoff",
            "backoff_multiplier" => "backoffMultiplier",
            "per_attempt_timeout" => "perAttemptRecvTimeout",
            "retryable_codes" => "retryableStatusCodes",
            other => other,
        })
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
