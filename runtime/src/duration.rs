//! Parsing of human-written durations such as `"250ms"`, `"1.5s"` or `"2m"`.

use std::time::Duration;

/// Parses a duration written as a decimal number followed by a unit.
///
/// Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. The gRPC service-config form (`"0.1s"`)
/// is accepted as a special case of the same grammar.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(steadfast::duration::parse("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(steadfast::duration::parse("0.1s"), Ok(Duration::from_millis(100)));
/// assert!(steadfast::duration::parse("10 parsecs").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. \"250ms\" or \"2s\""))?;
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    if number.is_empty() {
        return Err(format!(
            "`{text}` does not start with a number; write e.g. \"250ms\" or \"2s\""
        ));
    }
    let nanos_per_unit: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`; use one of ns, us, ms, s, m, h"
            ));
        }
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(format!("`{number}` is not a number"));
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| format!("`{number}` is too large"))?
    };
    // Exact decimal arithmetic on at most 18 fractional digits (more cannot matter).
    let frac = &frac[..frac.len().min(18)];
    let frac_part = if frac.is_empty() {
        0
    } else {
        let digits: u128 = frac
            .parse()
            .map_err(|_| format!("`{number}` is not a number"))?;
        digits * nanos_per_unit / 10u128.pow(frac.len() as u32)
    };
    let total = int
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(frac_part))
        .filter(|n| *n <= u128::from(u64::MAX))
        .ok_or_else(|| format!("`{text}` is too large"))?;
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse("7us"), Ok(Duration::from_micros(7)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0.000000001s"), Ok(Duration::from_nanos(1)));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(parse("").unwrap_err().contains("unit"));
        assert!(parse("100").unwrap_err().contains("no unit"));
        assert!(parse("ms").unwrap_err().contains("number"));
        assert!(parse("1.2.3s").is_err());
        assert!(parse("5 days").unwrap_err().contains("unknown unit"));
        assert!(
            parse("99999999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }
}
