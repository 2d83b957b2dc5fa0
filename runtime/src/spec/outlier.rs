//! The outlier-detection model: plain data, its checks, and its service-config JSON form.

use std::time::Duration;

use serde_json::Value;

use super::json::{Fields, bad};

use crate::Error;

/// Outlier detection: which endpoints of a service stop receiving calls for a while.
///
/// Follows gRFC A50 (gRPC's `outlier_detection` load-balancing policy) and Envoy's outlier
/// detection, with their field names and meanings:
/// - every `interval`, each endpoint's successes and failures of the interval are
///   evaluated by the *success-rate* rule (an endpoint whose success rate is below
///   `mean - stdev_factor * stdev` of the others is ejected) and the *failure-percentage*
///   rule (an endpoint failing more than `threshold` percent is ejected), each only with at
///   least `minimum_hosts` endpoints that saw `request_volume` calls;
/// - Envoy's `consecutive_local_origin_failure`: that many connection failures in a row
///   (refused, reset, connect timeout) eject an endpoint at once, without waiting for the
///   interval;
/// - Envoy's `consecutive_5xx`, here `consecutive_failure`: that many failures in a row of
///   any origin (failure codes, timeouts, connection failures) eject an endpoint at once,
///   but only while another endpoint in good standing answered its last call: when every
///   endpoint is failing, the failure is shared and nobody is ejected;
/// - an ejection lasts `base_ejection_time * multiplier`, capped at
///   `max(base_ejection_time, max_ejection_time)`; the multiplier grows by one per ejection
///   and shrinks by one per whole interval the endpoint spends back in service, so a
///   restored endpoint is soon back to short ejections;
/// - never more than `max_ejection_percent` of the endpoints are ejected at once, but at least
///   one may be (Envoy).
///
/// One addition, so that a failure shared by every replica (their common dependency is down)
/// ejects no one: the failure-percentage rule ejects nothing when *every* qualifying endpoint
/// is above the threshold. The success-rate rule needs no such guard: equal failure gives a
/// zero spread. Which outcomes count as failures is the table in [`crate::outcome`]: our own
/// timeouts count as failures but never eject at once; statuses relayed from a deeper hop
/// count for nothing.
///
/// Defaults: interval 10 s, base ejection 30 s, max ejection 300 s, max 10 % ejected (A50);
/// success rate with factor 1.9, 5 hosts, 100 calls (A50); failure percentage above 85 %
/// with 2 hosts and 20 calls (A50 uses 5 hosts and 50 calls; steadfast enables it for small
/// deployments, the guard above keeps it safe); one connection failure ejects; five
/// failures in a row eject (Envoy's `consecutive_5xx`).
///
/// ```
/// use std::time::Duration;
/// use steadfast::discovery::{FailurePercentageEjection, OutlierDetection};
///
/// let od = OutlierDetection {
///     interval: Duration::from_secs(1),
///     failure_percentage: Some(FailurePercentageEjection { minimum_hosts: 3, ..Default::default() }),
///     ..OutlierDetection::default()
/// };
/// od.validate()?;
/// let bad = OutlierDetection { max_ejection_percent: 150, ..OutlierDetection::default() };
/// assert!(bad.validate().unwrap_err().to_string().contains("max_ejection_percent"));
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierDetection {
    /// How often the rules run (> 0).
    pub interval: Duration,
    /// The first ejection's length (> 0).
    pub base_ejection_time: Duration,
    /// The longest ejection (taken as at least `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once (0..=100), but at least one.
    pub max_ejection_percent: u32,
    /// The success-rate rule, or `None` for off.
    pub success_rate: Option<SuccessRateEjection>,
    /// The failure-percentage rule, or `None` for off.
    pub failure_percentage: Option<FailurePercentageEjection>,
    /// Connection failures in a row that eject at once, or `None` for off (>= 1).
    pub consecutive_local_origin_failure: Option<u32>,
    /// Failures in a row that eject at once while another endpoint is answering, or `None`
    /// for off (>= 1).
    pub consecutive_failure: Option<u32>,
}

/// The success-rate rule of [`OutlierDetection`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuccessRateEjection {
    /// An endpoint is an outlier below `mean - stdev_factor * stdev` (A50 writes 1900 for
    /// 1.9; here the plain number, >= 0).
    pub stdev_factor: f64,
    /// The chance, in percent, that an outlier is really ejected (0..=100).
    pub enforcement_percentage: u32,
    /// Endpoints with enough calls needed before the rule runs (>= 1).
    pub minimum_hosts: u32,
    /// Calls in the interval for an endpoint to count (>= 1).
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        SuccessRateEjection {
            stdev_factor: 1.9,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// The failure-percentage rule of [`OutlierDetection`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailurePercentageEjection {
    /// An endpoint failing more than this percentage of its calls is an outlier (0..=100).
    pub threshold: u32,
    /// The chance, in percent, that an outlier is really ejected (0..=100).
    pub enforcement_percentage: u32,
    /// Endpoints with enough calls needed before the rule runs (>= 1).
    pub minimum_hosts: u32,
    /// Calls in the interval for an endpoint to count (>= 1).
    pub request_volume: u32,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        FailurePercentageEjection {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 2,
            request_volume: 20,
        }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: Some(FailurePercentageEjection::default()),
            consecutive_local_origin_failure: Some(1),
            consecutive_failure: Some(5),
        }
    }
}

fn percent(field: &'static str, v: u32) -> Result<(), Error> {
    if v > 100 {
        return Err(Error::config(
            field,
            format!("{field} is {v}, but it is a percentage: write a value in 0..=100"),
        ));
    }
    Ok(())
}

fn at_least_one(field: &'static str, v: u32) -> Result<(), Error> {
    if v == 0 {
        return Err(Error::config(
            field,
            format!("{field} is 0; write at least 1"),
        ));
    }
    Ok(())
}

impl OutlierDetection {
    /// Checks every field; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<(), Error> {
        if self.interval.is_zero() {
            return Err(Error::config(
                "outlier_detection.interval",
                "outlier_detection.interval is 0; write a positive duration such as \"10s\"",
            ));
        }
        if self.base_ejection_time.is_zero() {
            return Err(Error::config(
                "outlier_detection.base_ejection_time",
                "outlier_detection.base_ejection_time is 0; write a positive duration such as \"30s\"",
            ));
        }
        percent(
            "outlier_detection.max_ejection_percent",
            self.max_ejection_percent,
        )?;
        if let Some(sr) = &self.success_rate {
            if !(sr.stdev_factor.is_finite() && sr.stdev_factor >= 0.0) {
                return Err(Error::config(
                    "outlier_detection.success_rate.stdev_factor",
                    format!(
                        "outlier_detection.success_rate.stdev_factor is {}; write a number >= 0 such as 1.9",
                        sr.stdev_factor
                    ),
                ));
            }
            percent(
                "outlier_detection.success_rate.enforcement_percentage",
                sr.enforcement_percentage,
            )?;
            at_least_one(
                "outlier_detection.success_rate.minimum_hosts",
                sr.minimum_hosts,
            )?;
            at_least_one(
                "outlier_detection.success_rate.request_volume",
                sr.request_volume,
            )?;
        }
        if let Some(fp) = &self.failure_percentage {
            percent(
                "outlier_detection.failure_percentage.threshold",
                fp.threshold,
            )?;
            percent(
                "outlier_detection.failure_percentage.enforcement_percentage",
                fp.enforcement_percentage,
            )?;
            at_least_one(
                "outlier_detection.failure_percentage.minimum_hosts",
                fp.minimum_hosts,
            )?;
            at_least_one(
                "outlier_detection.failure_percentage.request_volume",
                fp.request_volume,
            )?;
        }
        if let Some(n) = self.consecutive_local_origin_failure {
            at_least_one("outlier_detection.consecutive_local_origin_failure", n)?;
        }
        if let Some(n) = self.consecutive_failure {
            at_least_one("outlier_detection.consecutive_failure", n)?;
        }
        Ok(())
    }

    /// How long the next ejection of an endpoint with this `multiplier` (already raised for
    /// this ejection) lasts.
    pub fn ejection_time(&self, multiplier: u32) -> Duration {
        let cap = self.max_ejection_time.max(self.base_ejection_time);
        self.base_ejection_time
            .saturating_mul(multiplier.max(1))
            .min(cap)
    }

    /// Whether one more endpoint may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        ejected < total
            && (ejected == 0 || ejected * 100 < self.max_ejection_percent as usize * total)
    }
}

/// The names under which a `loadBalancingConfig` entry carries outlier detection (gRFC A50
/// writes `outlier_detection_experimental`).
const LB_NAMES: [&str; 2] = ["outlier_detection", "outlier_detection_experimental"];

/// A whole number field as `u32`, `default` when absent.
fn uint(f: &Fields<'_>, camel: &str, default: u32) -> Result<u32, Error> {
    match f.uint(camel)? {
        None => Ok(default),
        Some(n) => u32::try_from(n).map_err(|_| bad(&f.at(camel), format!("is {n}; too large"))),
    }
}

impl OutlierDetection {
    /// Reads outlier detection from a service config's `loadBalancingConfig` list (gRFC A50
    /// JSON: `interval`, `baseEjectionTime`, `maxEjectionTime`, `maxEjectionPercent`,
    /// `successRateEjection {stdevFactor (1900 = 1.9), enforcementPercentage, minimumHosts,
    /// requestVolume}`, `failurePercentageEjection {threshold, enforcementPercentage,
    /// minimumHosts, requestVolume}`; a rule that is absent is off, as in A50), plus
    /// steadfast's Envoy-style `consecutiveLocalOriginFailure` and `consecutiveFailure`
    /// (defaults kept when absent; 0 turns one off). `Ok(None)` when no entry is outlier
    /// detection.
    pub(crate) fn from_lb_config(list: &Value) -> Result<Option<OutlierDetection>, Error> {
        let Some(entries) = list.as_array() else {
            return Err(bad("loadBalancingConfig", "must be a list"));
        };
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("loadBalancingConfig[{i}]");
            let Some(policies) = entry.as_object() else {
                return Err(bad(&path, "must be a JSON object"));
            };
            for (name, body) in policies {
                match name.as_str() {
                    n if LB_NAMES.contains(&n) => {
                        let od = Self::from_a50(&format!("{path}.{name}"), body)?;
                        return Ok(Some(od));
                    }
                    // What steadfast does anyway: round-robin over instances in good
                    // standing.
                    "round_robin" => return Ok(None),
                    "pick_first" => {
                        tracing::warn!(
                            field = %format!("{path}.{name}"),
                            "pick_first is not followed: steadfast balances round-robin over \
                             instances in good standing"
                        );
                        return Ok(None);
                    }
                    // gRPC takes the first policy it knows; so does steadfast.
                    other => tracing::warn!(
                        field = %format!("{path}.{other}"),
                        "skipping a load balancing policy steadfast does not know"
                    ),
                }
            }
        }
        Ok(None)
    }

    fn from_a50(path: &str, body: &Value) -> Result<OutlierDetection, Error> {
        let m = Fields::new(path, body)?;
        let d = OutlierDetection::default();
        let sr = match m.get("successRateEjection") {
            None => None,
            Some(v) => {
                let s = Fields::new(m.at("successRateEjection"), v)?;
                let base = SuccessRateEjection::default();
                let rule = SuccessRateEjection {
                    stdev_factor: f64::from(uint(&s, "stdevFactor", 1900)?) / 1000.0,
                    enforcement_percentage: uint(
                        &s,
                        "enforcementPercentage",
                        base.enforcement_percentage,
                    )?,
                    minimum_hosts: uint(&s, "minimumHosts", base.minimum_hosts)?,
                    request_volume: uint(&s, "requestVolume", base.request_volume)?,
                };
                s.warn_unknown();
                Some(rule)
            }
        };
        let fp = match m.get("failurePercentageEjection") {
            None => None,
            Some(v) => {
                let f = Fields::new(m.at("failurePercentageEjection"), v)?;
                let rule = FailurePercentageEjection {
                    threshold: uint(&f, "threshold", 85)?,
                    enforcement_percentage: uint(&f, "enforcementPercentage", 100)?,
                    // A50's own defaults here, not steadfast's small-deployment ones.
                    minimum_hosts: uint(&f, "minimumHosts", 5)?,
                    request_volume: uint(&f, "requestVolume", 50)?,
                };
                f.warn_unknown();
                Some(rule)
            }
        };
        let optional = |key: &str, default: Option<u32>| -> Result<Option<u32>, Error> {
            Ok(match m.uint(key)? {
                None => default,
                Some(_) => Some(uint(&m, key, 0)?).filter(|n| *n > 0),
            })
        };
        let od = OutlierDetection {
            interval: m.duration("interval")?.unwrap_or(d.interval),
            base_ejection_time: m
                .duration("baseEjectionTime")?
                .unwrap_or(d.base_ejection_time),
            max_ejection_time: m
                .duration("maxEjectionTime")?
                .unwrap_or(d.max_ejection_time),
            max_ejection_percent: uint(&m, "maxEjectionPercent", d.max_ejection_percent)?,
            success_rate: sr,
            failure_percentage: fp,
            consecutive_local_origin_failure: optional(
                "consecutiveLocalOriginFailure",
                d.consecutive_local_origin_failure,
            )?,
            consecutive_failure: optional("consecutiveFailure", d.consecutive_failure)?,
        };
        // The child policy is the balancing below outlier detection: round-robin here.
        let _ = m.get("childPolicy");
        m.warn_unknown();
        od.validate()
            .map_err(|e| bad(path, format!("is invalid: {e}")))?;
        Ok(od)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Option<OutlierDetection>, Error> {
        OutlierDetection::from_lb_config(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn reads_the_a50_json_form() {
        let od = parse(
            r#"[{"outlier_detection_experimental": {
                "interval": "1s", "baseEjectionTime": "5s", "maxEjectionTime": "60s",
                "maxEjectionPercent": 50,
                "successRateEjection": {"stdevFactor": 1500, "minimumHosts": 3},
                "childPolicy": [{"round_robin": {}}]
            }}]"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(od.interval, Duration::from_secs(1));
        assert_eq!(od.base_ejection_time, Duration::from_secs(5));
        assert_eq!(od.max_ejection_percent, 50);
        let sr = od.success_rate.unwrap();
        assert_eq!(
            (sr.stdev_factor, sr.minimum_hosts, sr.request_volume),
            (1.5, 3, 100)
        );
        assert!(
            od.failure_percentage.is_none(),
            "absent rules are off, as in A50"
        );
        assert_eq!(od.consecutive_local_origin_failure, Some(1));
        assert!(parse(r#"[{"round_robin": {}}]"#).unwrap().is_none());
        let off = parse(r#"[{"outlier_detection": {"consecutiveFailure": 0}}]"#)
            .unwrap()
            .unwrap();
        assert_eq!(off.consecutive_failure, None);
    }

    #[test]
    fn bad_values_name_their_json_path() {
        let e = parse(r#"[{"outlier_detection": {"interval": 10}}]"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("loadBalancingConfig[0].outlier_detection.interval"),
            "{e}"
        );
        let e = parse(r#"[{"outlier_detection": {"maxEjectionPercent": 120}}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_ejection_percent is 120"), "{e}");
        let e =
            parse(r#"[{"outlier_detection": {"failurePercentageEjection": {"threshold": -1}}}]"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("failurePercentageEjection.threshold"), "{e}");
    }
}
