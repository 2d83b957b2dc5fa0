//! The one duration grammar of steadfast: a decimal number and a unit, such as `"250ms"`,
//! `"1.5s"` or `"2m"`, parsed exactly (no floating point).

use std::time::Duration;

/// The units, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// What to write, in every error message.
const EXAMPLE: &str = "write e.g. \"250ms\" or \"2s\"";

/// Parses a duration written as a decimal number followed by a unit.
///
/// Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`; a space between number and unit is
/// allowed. The gRPC service-config form (`"0.1s"`) is a special case of the same grammar.
/// The arithmetic is exact: `"0.1s"` is 100 ms to the nanosecond, and fractions finer than a
/// nanosecond are cut off. Errors are sentences that name the text and say what to write.
///
/// ```
/// use std::time::Duration;
/// use steadfast_spec::duration::parse;
///
/// assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
/// assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
/// assert!(parse("10 parsecs").unwrap_err().contains("unknown unit `parsecs`"));
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "`{text}` is negative; a duration is at least zero, {EXAMPLE}"
        ));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit; {EXAMPLE}"))?;
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    if number.is_empty() {
        return Err(format!("`{text}` does not start with a number; {EXAMPLE}"));
    }
    let nanos_per_unit = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, nanos)| *nanos)
        .ok_or_else(|| {
            format!("unknown unit `{unit}` in `{text}`; use one of ns, us, ms, s, m, h")
        })?;
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(format!("`{number}` in `{text}` is not a number; {EXAMPLE}"));
    }
    let too_large = || format!("`{text}` is too large; a duration is at most about 584 years");
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_large())?
    };
    // Exact decimal arithmetic on at most 18 fractional digits (finer digits cannot reach a
    // nanosecond in any unit).
    let frac = &frac[..frac.len().min(18)];
    let frac_part = if frac.is_empty() {
        0
    } else {
        let digits: u128 = frac
            .parse()
            .map_err(|_| format!("`{number}` in `{text}` is not a number; {EXAMPLE}"))?;
        digits * nanos_per_unit / 10u128.pow(frac.len() as u32)
    };
    let total = int
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(frac_part))
        .filter(|n| *n <= u128::from(u64::MAX))
        .ok_or_else(too_large)?;
    Ok(Duration::from_nanos(total as u64))
}

/// Writes a duration in the grammar [`parse`] reads, in the largest unit that keeps it exact.
///
/// ```
/// use std::time::Duration;
/// use steadfast_spec::duration::{format, parse};
///
/// assert_eq!(format(Duration::from_secs(172_800)), "48h");
/// assert_eq!(format(Duration::from_millis(1500)), "1500ms");
/// assert_eq!(format(Duration::ZERO), "0s");
/// let d = Duration::from_nanos(1_000_000_007);
/// assert_eq!(parse(&format(d)), Ok(d));
/// ```
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (unit, per) = UNITS
        .iter()
        .rev()
        .find(|(name, per)| *name != "µs" && nanos.is_multiple_of(*per))
        .map_or(("ns", 1), |(name, per)| (*name, *per));
    format!("{}{unit}", nanos / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("3ns"), Ok(Duration::from_nanos(3)));
        assert_eq!(parse("7us"), Ok(Duration::from_micros(7)));
        assert_eq!(parse("7µs"), Ok(Duration::from_micros(7)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse(" 10 ms "), Ok(Duration::from_millis(10)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("0.3s"), Ok(Duration::from_millis(300)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse("3."),
            Err("`3.` has no unit; write e.g. \"250ms\" or \"2s\"".into())
        );
        assert_eq!(parse("3.s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0.1h"), Ok(Duration::from_secs(360)));
        assert_eq!(parse("0.000000001s"), Ok(Duration::from_nanos(1)));
        // Below a nanosecond is cut off, not rounded.
        assert_eq!(parse("0.0000000019s"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse("1.9ns"), Ok(Duration::from_nanos(1)));
        // Digits past the 18th cannot matter.
        assert_eq!(
            parse("0.1000000000000000000009s"),
            Ok(Duration::from_millis(100))
        );
    }

    #[test]
    fn the_largest_duration_fits_and_one_more_does_not() {
        assert_eq!(
            parse("18446744073709551615ns"),
            Ok(Duration::from_nanos(u64::MAX))
        );
        assert!(
            parse("18446744073709551616ns")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse("5124095.576h").is_ok());
        assert!(parse("5124096h").unwrap_err().contains("too large"));
        assert!(
            parse("99999999999999999999999999999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn rejects_garbage_with_a_sentence() {
        assert!(parse("").unwrap_err().contains("no unit"));
        assert!(parse("100").unwrap_err().contains("no unit"));
        assert!(
            parse("ms")
                .unwrap_err()
                .contains("does not start with a number")
        );
        assert!(
            parse("soon")
                .unwrap_err()
                .contains("does not start with a number")
        );
        assert!(parse("1.2.3s").unwrap_err().contains("is not a number"));
        assert!(parse(".s").unwrap_err().contains("is not a number"));
        assert!(parse("5 days").unwrap_err().contains("unknown unit `days`"));
        assert!(parse("2d").unwrap_err().contains("unknown unit `d`"));
        assert!(parse("1S").unwrap_err().contains("unknown unit"));
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(
            parse("+1s")
                .unwrap_err()
                .contains("does not start with a number")
        );
        for bad in ["", "-1s", "1.2.3s", "5 days", "99999999999999999999999h"] {
            assert!(
                parse(bad).unwrap_err().contains('`'),
                "{bad} names the text"
            );
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(3),
            Duration::from_millis(250),
            Duration::from_secs(90),
            Duration::from_secs(7200),
            Duration::from_nanos(u64::MAX),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(Duration::from_secs(60)), "1m");
        assert_eq!(format(Duration::from_secs(86_400)), "24h");
    }
}
