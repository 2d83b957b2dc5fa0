//! The interval sweep of outlier detection (gRFC A50), as a pure function over per-endpoint
//! counts; the pool applies its verdicts. The configuration is [`OutlierDetection`].

use crate::spec::outlier::OutlierDetection;

/// One endpoint's counts over the interval just ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    /// Ejected now.
    pub(crate) ejected: bool,
}

impl Counts {
    fn volume(&self) -> u64 {
        self.successes + self.failures
    }
    fn success_rate(&self) -> f64 {
        self.successes as f64 / self.volume().max(1) as f64
    }
}

/// The interval sweep of A50: the indices of the endpoints to eject now, in order.
/// `roll` returns a uniform sample in `0..100` (for the enforcement percentages).
pub(crate) fn sweep(
    od: &OutlierDetection,
    hosts: &[Counts],
    mut roll: impl FnMut() -> u32,
) -> Vec<usize> {
    let total = hosts.len();
    let mut ejected = hosts.iter().filter(|h| h.ejected).count();
    let mut out = Vec::new();

    if let Some(sr) = &od.success_rate {
        let candidates: Vec<usize> = (0..total)
            .filter(|&i| hosts[i].volume() >= u64::from(sr.request_volume))
            .collect();
        if candidates.len() >= sr.minimum_hosts as usize {
            let rates: Vec<f64> = candidates
                .iter()
                .map(|&i| hosts[i].success_rate())
                .collect();
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            let var =
                rates.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / rates.len() as f64;
            let bound = mean - var.sqrt() * sr.stdev_factor;
            for (&i, &rate) in candidates.iter().zip(&rates) {
                if hosts[i].ejected || out.contains(&i) {
                    continue;
                }
                if rate < bound
                    && od.may_eject(ejected, total)
                    && roll() < sr.enforcement_percentage
                {
                    out.push(i);
                    ejected += 1;
                }
            }
        }
    }

    if let Some(fp) = &od.failure_percentage {
        let candidates: Vec<usize> = (0..total)
            .filter(|&i| hosts[i].volume() >= u64::from(fp.request_volume))
            .collect();
        let above = |i: usize| {
            let h = &hosts[i];
            h.failures * 100 > u64::from(fp.threshold) * h.volume()
        };
        let shared = candidates.iter().all(|&i| above(i));
        if candidates.len() >= fp.minimum_hosts as usize && !shared {
            for &i in &candidates {
                if hosts[i].ejected || out.contains(&i) {
                    continue;
                }
                if above(i) && od.may_eject(ejected, total) && roll() < fp.enforcement_percentage {
                    out.push(i);
                    ejected += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spec::outlier::{FailurePercentageEjection, SuccessRateEjection};

    fn h(successes: u64, failures: u64) -> Counts {
        Counts {
            successes,
            failures,
            ejected: false,
        }
    }

    fn only_sr(sr: SuccessRateEjection) -> OutlierDetection {
        OutlierDetection {
            success_rate: Some(sr),
            failure_percentage: None,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        }
    }

    fn only_fp(fp: FailurePercentageEjection) -> OutlierDetection {
        OutlierDetection {
            success_rate: None,
            failure_percentage: Some(fp),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        }
    }

    const ALWAYS: fn() -> u32 = || 0;

    #[test]
    fn success_rate_ejects_below_mean_minus_factor_times_stdev() {
        let sr = SuccessRateEjection {
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
            enforcement_percentage: 100,
        };
        // Rates 1.0 x5 and 0.5: mean 0.9167, stdev 0.186, bound 0.563: the 0.5 host goes.
        let hosts = [
            h(100, 0),
            h(100, 0),
            h(100, 0),
            h(100, 0),
            h(100, 0),
            h(50, 50),
        ];
        assert_eq!(sweep(&only_sr(sr), &hosts, ALWAYS), vec![5]);
        // A higher factor puts the bound below 0.5: nobody goes.
        let wide = SuccessRateEjection {
            stdev_factor: 2.5,
            ..sr
        };
        assert!(sweep(&only_sr(wide), &hosts, ALWAYS).is_empty());
        // When the others are perfect, even 0.9 is an outlier: the spread is small.
        let hosts = [
            h(100, 0),
            h(100, 0),
            h(100, 0),
            h(100, 0),
            h(100, 0),
            h(90, 10),
        ];
        assert_eq!(sweep(&only_sr(sr), &hosts, ALWAYS), vec![5]);
        // Ordinary variation (mean 0.978, bound 0.941) ejects nobody.
        let hosts = [h(95, 5), h(100, 0), h(97, 3), h(99, 1), h(100, 0), h(96, 4)];
        assert!(sweep(&only_sr(sr), &hosts, ALWAYS).is_empty());
    }

    #[test]
    fn success_rate_needs_minimum_hosts_with_request_volume() {
        let sr = SuccessRateEjection::default(); // 5 hosts, 100 calls
        let bad = [h(100, 0), h(100, 0), h(100, 0), h(100, 0), h(0, 100)];
        assert_eq!(sweep(&only_sr(sr), &bad, ALWAYS), vec![4]);
        // Four hosts only: the rule does not run.
        assert!(sweep(&only_sr(sr), &bad[1..], ALWAYS).is_empty());
        // Five hosts, but one under the request volume: four qualify, the rule does not run.
        let thin = [h(100, 0), h(100, 0), h(100, 0), h(99, 0), h(0, 100)];
        assert!(sweep(&only_sr(sr), &thin, ALWAYS).is_empty());
    }

    #[test]
    fn failure_percentage_ejects_above_the_threshold() {
        let fp = FailurePercentageEjection {
            threshold: 50,
            minimum_hosts: 3,
            request_volume: 10,
            enforcement_percentage: 100,
        };
        let hosts = [h(10, 0), h(4, 6), h(5, 5), h(0, 3)];
        // 60 % > 50 goes; exactly 50 % stays; 3 calls are under the volume.
        assert_eq!(sweep(&only_fp(fp), &hosts, ALWAYS), vec![1]);
        // Two qualifying hosts are fewer than minimum_hosts 3.
        assert!(sweep(&only_fp(fp), &hosts[..2], ALWAYS).is_empty());
    }

    #[test]
    fn a_failure_shared_by_every_replica_ejects_nobody() {
        // The common dependency is down: every replica fails everything.
        let hosts = [h(0, 200), h(0, 200), h(0, 200)];
        let both = OutlierDetection {
            max_ejection_percent: 100,
            success_rate: Some(SuccessRateEjection {
                minimum_hosts: 3,
                ..Default::default()
            }),
            failure_percentage: Some(FailurePercentageEjection::default()),
            ..OutlierDetection::default()
        };
        assert!(sweep(&both, &hosts, ALWAYS).is_empty());
        // Mostly failing everywhere, unevenly but all above the threshold: still nobody.
        let hosts = [h(1, 199), h(10, 190), h(20, 180)];
        assert!(
            sweep(
                &only_fp(FailurePercentageEjection::default()),
                &hosts,
                ALWAYS
            )
            .is_empty()
        );
    }

    #[test]
    fn max_ejection_percent_caps_ejections_but_allows_one() {
        let fp = FailurePercentageEjection {
            minimum_hosts: 1,
            request_volume: 1,
            ..Default::default()
        };
        let hosts = [
            h(0, 10),
            h(0, 10),
            h(10, 0),
            h(10, 0),
            h(10, 0),
            h(10, 0),
            h(10, 0),
            h(10, 0),
            h(10, 0),
            h(10, 0),
        ];
        let od = OutlierDetection {
            max_ejection_percent: 10,
            ..only_fp(fp)
        };
        // 10 % of 10 is one host.
        assert_eq!(sweep(&od, &hosts, ALWAYS), vec![0]);
        // 0 % still allows one.
        let none = OutlierDetection {
            max_ejection_percent: 0,
            ..od
        };
        assert_eq!(sweep(&none, &hosts, ALWAYS), vec![0]);
        // One already ejected: no room for another at 10 %.
        let mut hosts = hosts;
        hosts[9].ejected = true;
        assert!(sweep(&od, &hosts, ALWAYS).is_empty());
        // 50 % of 10 is five: both outliers go.
        let half = OutlierDetection {
            max_ejection_percent: 50,
            ..od
        };
        assert_eq!(sweep(&half, &hosts, ALWAYS), vec![0, 1]);
        assert!(od.may_eject(0, 3) && !od.may_eject(1, 3) && !od.may_eject(3, 3));
    }

    #[test]
    fn enforcement_percentage_is_a_chance() {
        let fp = FailurePercentageEjection {
            minimum_hosts: 1,
            request_volume: 1,
            enforcement_percentage: 30,
            ..Default::default()
        };
        let hosts = [h(0, 10), h(10, 0)];
        assert_eq!(sweep(&only_fp(fp), &hosts, || 29), vec![0]);
        assert!(sweep(&only_fp(fp), &hosts, || 30).is_empty());
    }

    #[test]
    fn ejection_time_grows_with_the_multiplier_and_is_capped() {
        let od = OutlierDetection {
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            ..OutlierDetection::default()
        };
        assert_eq!(od.ejection_time(1), Duration::from_secs(30));
        assert_eq!(od.ejection_time(3), Duration::from_secs(90));
        assert_eq!(od.ejection_time(4), Duration::from_secs(100));
        assert_eq!(od.ejection_time(u32::MAX), Duration::from_secs(100));
        // A max below the base means the base.
        let short = OutlierDetection {
            max_ejection_time: Duration::from_secs(1),
            ..od
        };
        assert_eq!(short.ejection_time(5), Duration::from_secs(30));
    }

    #[test]
    fn every_invalid_field_is_named() {
        let cases: [(OutlierDetection, &str); 5] = [
            (
                OutlierDetection {
                    interval: Duration::ZERO,
                    ..Default::default()
                },
                "interval",
            ),
            (
                OutlierDetection {
                    base_ejection_time: Duration::ZERO,
                    ..Default::default()
                },
                "base_ejection_time",
            ),
            (
                OutlierDetection {
                    success_rate: Some(SuccessRateEjection {
                        stdev_factor: f64::NAN,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "stdev_factor",
            ),
            (
                OutlierDetection {
                    failure_percentage: Some(FailurePercentageEjection {
                        threshold: 101,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "failure_percentage.threshold",
            ),
            (
                OutlierDetection {
                    consecutive_local_origin_failure: Some(0),
                    ..Default::default()
                },
                "consecutive_local_origin_failure",
            ),
        ];
        for (od, field) in cases {
            let err = od.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        OutlierDetection::default().validate().unwrap();
    }
}
