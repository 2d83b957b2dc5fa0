//! gRPC wire names shared by several modules: the `grpc-timeout` header (at most 8 ASCII
//! digits and one unit letter), steadfast's own metadata keys, and a safe rendering of
//! untrusted header values for logs. Depends on nothing else in the crate.

use std::time::Duration;

/// Metadata key on the DEADLINE_EXCEEDED that a steadfast server sends when the caller's
/// `grpc-timeout` expires. A steadfast client that sees it knows its own per-attempt timeout
/// expired (in the server, a hair before its own timer) and treats the attempt as timed out.
pub const DEADLINE_EXPIRED_KEY: &str = "steadfast-deadline-expired";

/// The header that carries a call's remaining time to the server.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value (`"100m"`, `"3S"`, `"250000u"`).
///
/// ```
/// use std::time::Duration;
/// use steadfast::deadline::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout(b"250m"), Ok(Duration::from_millis(250)));
/// assert!(parse_grpc_timeout(b"123456789S").is_err()); // more than 8 digits
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, &'static str> {
    let (&unit, digits) = value.split_last().ok_or("empty value")?;
    if digits.is_empty() || digits.len() > 8 {
        return Err("expected 1 to 8 digits before the unit");
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err("expected only digits before the unit");
    }
    let n: u64 = digits
        .iter()
        .fold(0, |acc, d| acc * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err("unknown unit; expected one of H M S m u n"),
    })
}

/// Formats `d` as a `grpc-timeout` value: the finest unit whose count fits in 8 digits,
/// rounded up so the server never sees less time than is left.
pub(crate) fn grpc_timeout_value(d: Duration) -> http::HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let (n, unit) = [
        (1u128, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos.div_ceil(per), unit))
    .find(|(n, _)| *n <= MAX)
    .unwrap_or((MAX, 'H'));
    let mut text = n.to_string();
    text.push(unit);
    http::HeaderValue::from_str(&text).expect("digits and a unit letter")
}

/// Escapes and truncates untrusted header bytes for a log line.
pub(crate) fn sanitize(value: &[u8]) -> String {
    const MAX: usize = 64;
    let mut out: String = value
        .iter()
        .take(MAX)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if value.len() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout(b"2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"2S"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"2m"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_grpc_timeout(b"2u"), Ok(Duration::from_micros(2)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Ok(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b""[..],
            b"S",
            b"1x",
            b"-1S",
            b"1.5S",
            b"123456789m",
            b" 1S",
        ] {
            assert!(parse_grpc_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sanitize_escapes_and_truncates() {
        assert_eq!(sanitize(b"a\nb\xff"), "a\\nb\\xff");
        assert!(sanitize(&[b'x'; 100]).ends_with("..."));
    }
}

#[cfg(test)]
mod grpc_timeout_tests {
    use super::*;

    #[test]
    fn formatted_values_round_trip_and_never_shrink() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(250),
            Duration::from_secs(99_999_999 / 1000 + 1), // past 8 digits of ms
            Duration::from_secs(30 * 24 * 3600),
        ] {
            let v = grpc_timeout_value(d);
            assert!(v.len() <= 9, "{v:?}");
            let back = parse_grpc_timeout(v.as_bytes()).unwrap();
            assert!(back >= d, "{d:?} -> {v:?} -> {back:?}");
        }
        assert_eq!(grpc_timeout_value(Duration::from_millis(250)), "250000u");
        assert_eq!(grpc_timeout_value(Duration::from_secs(200)), "200000m");
    }
}
