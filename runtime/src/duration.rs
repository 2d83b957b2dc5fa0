//! Parsing of human-written durations such as `"250ms"`, `"1.5s"` or `"2m"`.

use std::time::Duration;

/// Parses a duration written as a decimal number followed by a unit.
///
/// Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. The gRPC service-config form (`"0.1s"`)
/// is accepted as a special case of the same grammar. The arithmetic is exact, and the grammar
/// is the one `#[resilient_client]` reads at compile time (both use `steadfast-spec`).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(steadfast::duration::parse("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(steadfast::duration::parse("0.1s"), Ok(Duration::from_millis(100)));
/// assert!(steadfast::duration::parse("10 parsecs").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    steadfast_spec::duration::parse(text)
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
