//! Secrets kept out of logs and spans: which header and metadata keys are sensitive, and
//! a view of headers that hides their values.

use std::fmt;

/// Whether a header or metadata key holds a secret and must never be logged: the keys
/// `authorization`, `proxy-authorization`, `cookie`, `set-cookie` and `x-api-key`, any key
/// ending in `-bin` (binary metadata), and any key containing `token`, `secret`,
/// `password` or `session` (case-insensitive).
///
/// ```
/// use steadfast::telemetry::is_sensitive;
/// assert!(is_sensitive("Authorization"));
/// assert!(is_sensitive("x-refresh-token"));
/// assert!(is_sensitive("grpc-status-details-bin"));
/// assert!(!is_sensitive("content-type"));
/// ```
pub fn is_sensitive(key: &str) -> bool {
    const EXACT: [&str; 5] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
    ];
    const CONTAINS: [&str; 4] = ["token", "secret", "password", "session"];
    let key = key.to_ascii_lowercase();
    EXACT.contains(&key.as_str())
        || key.ends_with("-bin")
        || CONTAINS.iter().any(|part| key.contains(part))
}

/// Headers or gRPC metadata shown with every sensitive value ([`is_sensitive`]) replaced
/// by `[redacted]`: the way to record them on a span or a log line.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert("authorization", "Bearer sekrit".parse().unwrap());
/// headers.insert("accept", "application/json".parse().unwrap());
/// let shown = format!("{:?}", steadfast::telemetry::redacted(&headers));
/// assert!(!shown.contains("sekrit"));
/// assert!(shown.contains(r#""authorization": "[redacted]""#));
/// assert!(shown.contains(r#""accept": "application/json""#));
/// // In a handler: #[steadfast::traced(fields(headers = ?steadfast::telemetry::redacted(&headers)))]
/// ```
pub fn redacted<T: Headers + ?Sized>(headers: &T) -> Redacted<'_, T> {
    Redacted(headers)
}

/// What [`redacted`] shows: HTTP headers or gRPC metadata.
pub trait Headers {
    /// Each entry as key and printable value (binary and non-UTF-8 values are not shown).
    fn entries(&self) -> Vec<(&str, Option<&str>)>;
}

impl Headers for http::HeaderMap {
    fn entries(&self) -> Vec<(&str, Option<&str>)> {
        self.iter()
            .map(|(k, v)| (k.as_str(), v.to_str().ok()))
            .collect()
    }
}

impl Headers for tonic::metadata::MetadataMap {
    fn entries(&self) -> Vec<(&str, Option<&str>)> {
        self.iter()
            .map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => (k.as_str(), v.to_str().ok()),
                tonic::metadata::KeyAndValueRef::Binary(k, _) => (k.as_str(), None),
            })
            .collect()
    }
}

/// Headers with secrets hidden (see [`redacted`]).
pub struct Redacted<'a, T: ?Sized>(&'a T);

impl<T: Headers + ?Sized> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.0.entries() {
            let shown = match value {
                _ if is_sensitive(key) => "[redacted]",
                Some(v) => v,
                None => "[binary]",
            };
            map.entry(&key, &shown);
        }
        map.finish()
    }
}
