//! Server pushback: the `grpc-retry-pushback-ms` trailer.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The metadata key a server uses to tell the client when (or whether) to retry.
pub const PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// What a server said through `grpc-retry-pushback-ms`.
///
/// ```
/// use std::time::Duration;
/// use steadfast::retry::Pushback;
/// use tonic::metadata::MetadataMap;
///
/// let mut md = MetadataMap::new();
/// assert_eq!(Pushback::from_metadata(&md), Pushback::Absent);
/// md.insert("grpc-retry-pushback-ms", "500".parse().unwrap());
/// assert_eq!(Pushback::from_metadata(&md), Pushback::RetryAfter(Duration::from_millis(500)));
/// md.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
/// assert_eq!(Pushback::from_metadata(&md), Pushback::DoNotRetry);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushback {
    /// No pushback: use the normal backoff.
    Absent,
    /// Retry after exactly this delay; the backoff after it restarts from the initial value.
    RetryAfter(Duration),
    /// Negative, malformed or repeated value: do not retry this call.
    DoNotRetry,
}

impl Pushback {
    /// Reads the pushback from response trailers (a [`tonic::Status`]'s metadata).
    pub fn from_metadata(metadata: &MetadataMap) -> Pushback {
        let mut values = metadata.get_all(PUSHBACK_KEY).iter();
        let Some(value) = values.next() else {
            return Pushback::Absent;
        };
        if values.next().is_some() {
            return Pushback::DoNotRetry;
        }
        match value.to_str().ok().and_then(parse_millis) {
            Some(ms) => Pushback::RetryAfter(Duration::from_millis(ms)),
            None => Pushback::DoNotRetry,
        }
    }
}

/// A non-negative decimal integer of milliseconds, nothing else (no sign, no spaces).
fn parse_millis(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Values too large for u64 are still a valid "wait very long": saturate.
    Some(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> Pushback {
        let mut md = MetadataMap::new();
        for v in values {
            md.append(PUSHBACK_KEY, v.parse().unwrap());
        }
        Pushback::from_metadata(&md)
    }

    #[test]
    fn parses_the_a6_cases() {
        assert_eq!(with(&[]), Pushback::Absent);
        assert_eq!(with(&["0"]), Pushback::RetryAfter(Duration::ZERO));
        assert_eq!(
            with(&["500"]),
            Pushback::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(
            with(&["99999999999999999999999"]),
            Pushback::RetryAfter(Duration::from_millis(u64::MAX))
        );
        for bad in ["-1", "+5", "1.5", "abc", " 5", "5ms", ""] {
            assert_eq!(with(&[bad]), Pushback::DoNotRetry, "value {bad:?}");
        }
        assert_eq!(with(&["100", "200"]), Pushback::DoNotRetry);
    }
}
