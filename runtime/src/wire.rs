//! gRPC wire names shared by several modules: the `grpc-timeout` header (at most 8 ASCII
//! digits and one unit letter), steadfast's own metadata keys, and a safe rendering of
//! untrusted header values for logs. Depends on nothing else in the crate.

use std::cell::RefCell;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};

/// Metadata keys parsed once: inserting with a `&'static str` validates the name on every call.
macro_rules! keys {
    ($($name:ident = $text:expr;)*) => {$(
        pub(crate) static $name: LazyLock<MetadataKey<Ascii>> =
            LazyLock::new(|| MetadataKey::from_static($text));
    )*};
}

keys! {
    GRPC_TIMEOUT_KEY = GRPC_TIMEOUT;
    PREVIOUS_ATTEMPTS = PREVIOUS_ATTEMPTS_KEY;
    TRACEPARENT_KEY = TRACEPARENT;
    TRACESTATE_KEY = TRACESTATE;
    X_TRACE_ID_KEY = X_TRACE_ID;
}

/// The metadata key that tells the server how many attempts came before this one.
pub const PREVIOUS_ATTEMPTS_KEY: &str = "grpc-previous-rpc-attempts";
/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";
/// The `x-trace-id` header: the trace id alone, read from callers and sent on responses.
pub const X_TRACE_ID: &str = "x-trace-id";

/// Metadata key on the DEADLINE_EXCEEDED that a steadfast server sends when the caller's
/// `grpc-timeout` expires. A steadfast client that sees it knows its own per-attempt timeout
/// expired (in the server, a hair before its own timer) and treats the attempt as timed out.
pub const DEADLINE_EXPIRED_KEY: &str = "steadfast-deadline-expired";

/// The header that carries a call's remaining time to the server.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// [`GRPC_TIMEOUT`] as a header name, parsed at compile time.
pub(crate) const GRPC_TIMEOUT_HEADER: http::HeaderName =
    http::HeaderName::from_static(GRPC_TIMEOUT);

/// Lets the names of the headers that steadfast sends as never-indexed literals
/// (`traceparent`, `x-trace-id`, `grpc-timeout`) enter the connection's HPACK table: this
/// request sends them indexable. Called for the first request on each new connection (see
/// `connection::Connection::prepare`).
pub(crate) fn index_names(headers: &mut http::HeaderMap) {
    const NAMES: [http::HeaderName; 3] = [
        http::HeaderName::from_static(TRACEPARENT),
        http::HeaderName::from_static(X_TRACE_ID),
        GRPC_TIMEOUT_HEADER,
    ];
    for name in &NAMES {
        if let Some(value) = headers.get_mut(name) {
            value.set_sensitive(false);
        }
    }
}

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

/// Writes `d` as a `grpc-timeout` value into `buf`: the finest unit whose count fits in 8
/// digits, rounded up so the server never sees less time than is left. No allocation.
fn grpc_timeout_text(d: Duration, buf: &mut [u8; 9]) -> &[u8] {
    const MAX: u64 = 99_999_999;
    const UNITS: [(u64, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    // In 64 bits and one division: the unit is found by comparing with each unit's largest
    // count. Past 2^64 ns (584 years), the largest value the header holds (11,400 years).
    let (n, unit) = match u64::try_from(d.as_nanos()) {
        Ok(nanos) => UNITS
            .iter()
            .find(|(per, _)| MAX.checked_mul(*per).is_none_or(|most| nanos <= most))
            .map_or((MAX, b'H'), |&(per, unit)| (nanos.div_ceil(per), unit)),
        Err(_) => (MAX, b'H'),
    };
    buf[8] = unit;
    let mut at = 8;
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// `text` as shared bytes carved from a buffer of this thread: the header values written on
/// every call (`traceparent`, `x-trace-id`, `grpc-timeout`) take one allocation per 4 KiB of
/// values instead of one each. A buffer is freed when the last value carved from it is
/// dropped, so a value kept somewhere keeps at most 4 KiB alive.
pub(crate) fn carve(text: &[u8]) -> Bytes {
    const SLAB: usize = 4096;
    thread_local! {
        static SLAB_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    }
    SLAB_BUF.with_borrow_mut(|buf| {
        if buf.capacity() < text.len() {
            *buf = BytesMut::with_capacity(SLAB.max(text.len()));
        }
        buf.extend_from_slice(text);
        buf.split().freeze()
    })
}

/// Formats `d` as a `grpc-timeout` header value (see [`grpc_timeout_text`]), marked
/// sensitive: a value new on every request is sent as a never-indexed HPACK literal instead
/// of churning the connection's header table.
pub(crate) fn grpc_timeout_value(d: Duration) -> http::HeaderValue {
    let mut buf = [0; 9];
    let mut v = http::HeaderValue::from_maybe_shared(carve(grpc_timeout_text(d, &mut buf)))
        .expect("digits and a unit letter");
    v.set_sensitive(true);
    v
}

/// [`grpc_timeout_value`] as gRPC metadata.
pub(crate) fn grpc_timeout_metadata(d: Duration) -> MetadataValue<Ascii> {
    let mut buf = [0; 9];
    let mut v = MetadataValue::try_from(carve(grpc_timeout_text(d, &mut buf)))
        .expect("digits and a unit letter");
    v.set_sensitive(true);
    v
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
    fn carved_values_share_a_buffer_until_it_is_full_and_keep_their_bytes() {
        // Own thread: a fresh, empty buffer.
        std::thread::spawn(|| {
            let texts: Vec<Vec<u8>> = (0..200u8).map(|i| vec![b'a' + i % 26; 55]).collect();
            let carved: Vec<Bytes> = texts.iter().map(|t| carve(t)).collect();
            for (t, c) in texts.iter().zip(&carved) {
                assert_eq!(&c[..], &t[..]);
            }
            // 4096 / 55: 74 values per buffer, each right after the one before.
            let adjacent = carved
                .windows(2)
                .filter(|w| w[1].as_ptr() == w[0].as_ptr().wrapping_add(55))
                .count();
            assert_eq!(adjacent, 199 - 2, "two new buffers for 200 values");
            // A value larger than a buffer gets one of its own.
            let big = vec![b'x'; 10_000];
            assert_eq!(&carve(&big)[..], &big[..]);
            assert_eq!(&carve(b"after")[..], b"after");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn grpc_timeout_values_round_up_in_the_finest_unit_that_fits() {
        let mut d = Duration::from_nanos(1);
        let mut checked = 0;
        while d < Duration::from_secs(86_400 * 365 * 200) {
            for d in [d, d - Duration::from_nanos(1), d + Duration::from_nanos(7)] {
                let v = grpc_timeout_metadata(d);
                assert!(v.is_sensitive());
                let bytes = v.as_bytes();
                assert_eq!(bytes, grpc_timeout_value(d).as_bytes());
                let sent = parse_grpc_timeout(bytes).unwrap();
                let unit = parse_grpc_timeout(&[b"1", &bytes[bytes.len() - 1..]].concat()).unwrap();
                assert!(sent >= d && sent - d < unit, "{d:?} sent as {sent:?}");
                if d.as_nanos() % unit.as_nanos() == 0 {
                    // Exact: as tonic writes it.
                    let mut req = tonic::Request::new(());
                    req.set_timeout(d);
                    assert_eq!(bytes, req.metadata().get(GRPC_TIMEOUT).unwrap().as_bytes());
                }
                checked += 1;
            }
            d = d * 3 + Duration::from_nanos(1);
        }
        assert!(checked > 100);
        assert_eq!(grpc_timeout_value(Duration::ZERO), "0n");
        // Past what 64 bits of nanoseconds hold: the most the header can say, never less.
        assert_eq!(grpc_timeout_value(Duration::MAX), "99999999H");
        assert_eq!(
            grpc_timeout_value(Duration::from_secs(600 * 365 * 86_400)),
            "99999999H"
        );
    }

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
