//! The `tracestate` header (W3C Trace Context Level 2).
//!
//! `list = list-member 0*31( OWS "," OWS list-member )`; a member is `key "=" value` or empty.
//! Keys: `(lcalpha / DIGIT) 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@")`. Values:
//! 1 to 256 characters from `%x20-2B / %x2D-3C / %x3E-7E`, not ending in a space. At most 32
//! members, each key once. An invalid list is discarded whole.

use std::sync::Arc;

/// Why a `tracestate` was discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceStateError {
    /// A member has a key that breaks the grammar.
    Key,
    /// A member has a value that breaks the grammar (or no `=`).
    Value,
    /// More than 32 members.
    TooManyMembers,
}

impl std::fmt::Display for TraceStateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TraceStateError::Key => "a key breaks the grammar",
            TraceStateError::Value => "a value breaks the grammar",
            TraceStateError::TooManyMembers => "more than 32 members",
        })
    }
}

/// A validated `tracestate`, kept in its normalised text form (cheap to clone).
///
/// ```
/// use steadfast::trace::TraceState;
///
/// let ts = TraceState::parse(&[b"congo=t61rcWkgMzE , rojo=00f067aa0ba902b7"]).unwrap();
/// assert_eq!(ts.as_str(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
/// assert_eq!(ts.get("rojo"), Some("00f067aa0ba902b7"));
/// // A duplicated key keeps its first value; a key that breaks the grammar is an error.
/// assert_eq!(TraceState::parse(&[b"foo=1,foo=2"]).unwrap().as_str(), "foo=1");
/// assert!(TraceState::parse(&[b"Foo=1"]).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceState(Option<Arc<str>>);

const MAX_MEMBERS: usize = 32;

fn valid_key(k: &[u8]) -> bool {
    let Some((&first, rest)) = k.split_first() else {
        return false;
    };
    (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest.len() <= 255
        && rest.iter().all(|&c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

fn valid_value(v: &[u8]) -> bool {
    let nblk = |c: u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    !v.is_empty()
        && v.len() <= 256
        && v.last().is_some_and(|&c| nblk(c))
        && v.iter().all(|&c| c == 0x20 || nblk(c))
}

impl TraceState {
    /// The empty state.
    pub const EMPTY: TraceState = TraceState(None);

    /// Parses every `tracestate` header of a request, combined in order.
    pub fn parse(headers: &[&[u8]]) -> Result<TraceState, TraceStateError> {
        let mut members: Vec<(&[u8], &[u8])> = Vec::new();
        for header in headers {
            for member in header.split(|&c| c == b',') {
                let member = super::traceparent::trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                let eq = member
                    .iter()
                    .position(|&c| c == b'=')
                    .ok_or(TraceStateError::Value)?;
                let (key, value) = (&member[..eq], &member[eq + 1..]);
                if !valid_key(key) {
                    return Err(TraceStateError::Key);
                }
                if !valid_value(value) {
                    return Err(TraceStateError::Value);
                }
                // W3C Trace Context (2021 on): a receiver keeps the first of duplicated
                // keys (the most recent vendor's entry) instead of dropping the header.
                if members.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                members.push((key, value));
                if members.len() > MAX_MEMBERS {
                    return Err(TraceStateError::TooManyMembers);
                }
            }
        }
        if members.is_empty() {
            return Ok(TraceState::EMPTY);
        }
        let mut text = String::new();
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            // Validated ASCII above.
            text.push_str(std::str::from_utf8(k).unwrap_or_default());
            text.push('=');
            text.push_str(std::str::from_utf8(v).unwrap_or_default());
        }
        Ok(TraceState(Some(text.into())))
    }

    /// The header value (empty when there is no state).
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.as_str()
            .split(',')
            .filter_map(|m| m.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.split(',').count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TraceState, TraceStateError> {
        TraceState::parse(&[s.as_bytes()])
    }

    #[test]
    fn the_specifications_cases() {
        use TraceStateError::*;
        let members = |n: usize| {
            (1..=n)
                .map(|i| format!("bar{i:02}={i:02}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let long_key = |n: usize| format!("{}=1", "z".repeat(n));
        let cases: Vec<(String, Result<usize, TraceStateError>)> = vec![
            ("foo=1 \t , \t bar=2,,baz=3".into(), Ok(3)),
            ("".into(), Ok(0)),
            (" , ,".into(), Ok(0)),
            ("foo=1,foo=2".into(), Ok(1)),
            (members(32), Ok(32)),
            (members(33), Err(TooManyMembers)),
            ("FOO=1".into(), Err(Key)),
            ("foo =1".into(), Err(Key)),
            ("foo=".into(), Err(Value)),
            ("foo=a=b".into(), Err(Value)),
            ("foo".into(), Err(Value)),
            ("foo= bar".into(), Ok(1)),
            ("1foo@bar@baz=1".into(), Ok(1)),
            ("_foo=1".into(), Err(Key)),
            (long_key(256), Ok(1)),
            (long_key(257), Err(Key)),
            (format!("foo={}", "v".repeat(256)), Ok(1)),
            (format!("foo={}", "v".repeat(257)), Err(Value)),
            ("foo=\u{7f}".into(), Err(Value)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse(&input).map(|s| s.len()),
                expected,
                "tracestate {input:?}"
            );
        }
    }

    #[test]
    fn several_headers_combine_in_order() {
        let ts = TraceState::parse(&[b"a=1", b"b=2, c=3"]).unwrap();
        assert_eq!(ts.as_str(), "a=1,b=2,c=3");
    }

    #[test]
    fn a_duplicated_key_keeps_its_first_value_and_the_rest_of_the_header() {
        let ts = TraceState::parse(&[b"a=1,b=2", b"a=3,c=4"]).unwrap();
        assert_eq!(ts.as_str(), "a=1,b=2,c=4");
        assert_eq!(ts.get("a"), Some("1"));
        // Duplicates do not count toward the 32-member limit.
        let many = format!(
            "{},x=2",
            (0..32).map(|_| "x=1").collect::<Vec<_>>().join(",")
        );
        assert_eq!(parse(&many).unwrap().as_str(), "x=1");
    }
}
