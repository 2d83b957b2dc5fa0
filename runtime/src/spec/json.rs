//! Reading the gRPC service config, a protobuf message in its JSON form, the way gRPC's own
//! parsers do: field names in lowerCamel (`maxAttempts`), as the proto spells them
//! (`max_attempts`), or in any case (grpc-go matches `MaxAttempts`); durations in the proto
//! JSON form (`"1.5s"`, `".01s"`). Every error names the JSON path of the value.

use std::cell::Cell;
use std::time::Duration;

use serde_json::Value;

use crate::Error;

/// An error at the JSON path `path`.
pub(crate) fn bad(path: &str, what: impl std::fmt::Display) -> Error {
    Error::ServiceConfig(format!("`{path}` {what}"))
}

/// `path.key`, or `key` at the root.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `maxAttempts`, `max_attempts` and `MaxAttempts` are one field.
fn normalise(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The fields of one JSON object, looked up by their lowerCamel name in any casing. Keys
/// never looked up are reported by [`warn_unknown`](Self::warn_unknown).
pub(crate) struct Fields<'a> {
    path: String,
    entries: Vec<(String, &'a str, &'a Value, Cell<bool>)>,
}

impl<'a> Fields<'a> {
    /// The object at `path`; an error when it is not an object, or when two keys name the
    /// same field (`maxAttempts` and `max_attempts`).
    pub(crate) fn new(path: impl Into<String>, value: &'a Value) -> Result<Self, Error> {
        let path = path.into();
        let map = value
            .as_object()
            .ok_or_else(|| bad(&path, format!("is {value}; write a JSON object")))?;
        let mut entries: Vec<(String, &str, &Value, Cell<bool>)> = Vec::with_capacity(map.len());
        for (key, v) in map {
            let norm = normalise(key);
            if let Some((_, other, _, _)) = entries.iter().find(|(n, ..)| *n == norm) {
                return Err(bad(
                    &join(&path, key),
                    format!("and `{other}` name the same field; give it once"),
                ));
            }
            entries.push((norm, key.as_str(), v, Cell::new(false)));
        }
        Ok(Fields { path, entries })
    }

    /// The value of the field `camel` (its lowerCamel name), in whatever casing it was
    /// written. JSON `null` counts as absent, as in proto JSON.
    pub(crate) fn get(&self, camel: &str) -> Option<&'a Value> {
        let norm = normalise(camel);
        let (_, _, v, used) = self.entries.iter().find(|(n, ..)| *n == norm)?;
        used.set(true);
        (!v.is_null()).then_some(*v)
    }

    /// The JSON path of the field `camel`, spelled as the JSON spells it.
    pub(crate) fn at(&self, camel: &str) -> String {
        let norm = normalise(camel);
        let key = self
            .entries
            .iter()
            .find(|(n, ..)| *n == norm)
            .map_or(camel, |(_, key, ..)| *key);
        join(&self.path, key)
    }

    /// Logs every key that no lookup asked for: a typo, or a field steadfast does not read.
    pub(crate) fn warn_unknown(&self) {
        for (_, key, _, used) in &self.entries {
            if !used.get() {
                tracing::warn!(
                    field = %join(&self.path, key),
                    "ignoring an unknown service config field"
                );
            }
        }
    }

    /// A whole number field.
    pub(crate) fn uint(&self, camel: &str) -> Result<Option<u64>, Error> {
        self.get(camel)
            .map(|v| {
                // Proto JSON writes 64-bit integers as strings; accept both.
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64)
                            .map(|f| f as u64)
                    })
                    .ok_or_else(|| bad(&self.at(camel), format!("is {v}; write a whole number")))
            })
            .transpose()
    }

    /// A number field.
    pub(crate) fn number(&self, camel: &str) -> Result<Option<f64>, Error> {
        self.get(camel)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| bad(&self.at(camel), format!("is {v}; write a number")))
            })
            .transpose()
    }

    /// A boolean field.
    pub(crate) fn boolean(&self, camel: &str) -> Result<Option<bool>, Error> {
        self.get(camel)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| bad(&self.at(camel), format!("is {v}; write true or false")))
            })
            .transpose()
    }

    /// A string field.
    pub(crate) fn string(&self, camel: &str) -> Result<Option<&'a str>, Error> {
        self.get(camel)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| bad(&self.at(camel), format!("is {v}; write a string")))
            })
            .transpose()
    }

    /// A duration field ([`duration`]).
    pub(crate) fn duration(&self, camel: &str) -> Result<Option<Duration>, Error> {
        let at = self.at(camel);
        self.get(camel)
            .map(|v| match v.as_str() {
                Some(s) => duration(&at, s),
                None => Err(bad(
                    &at,
                    format!("is {v}; write a duration string such as \"1.5s\""),
                )),
            })
            .transpose()
    }
}

/// A duration as the service config writes it: the proto JSON form, seconds with up to nine
/// fractional digits and an `s` (`"1s"`, `"1.5s"`, `".01s"`, `"0.250s"`); steadfast also
/// reads its friendly form (`"250ms"`, `"1m30s"`) as an extension. Negative durations are
/// refused.
pub(crate) fn duration(path: &str, text: &str) -> Result<Duration, Error> {
    let t = text.trim();
    if let Some(number) = t.strip_suffix('s')
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.len() > 9 || frac.contains('.') {
            return Err(bad(
                path,
                format!("is \"{text}\"; write seconds with at most 9 decimals, e.g. \"0.25s\""),
            ));
        }
        let secs: u64 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| bad(path, format!("is \"{text}\"; too many seconds")))?
        };
        let nanos: u32 = format!("{frac:0<9}").parse().unwrap_or(0);
        return Ok(Duration::new(secs, nanos));
    }
    crate::duration::parse(t).map_err(|why| bad(path, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_proto_json_form_and_the_friendly_one() {
        let d = |s: &str| duration("x", s);
        assert_eq!(d("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(d("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(d(".01s").unwrap(), Duration::from_millis(10));
        assert_eq!(d("0.250s").unwrap(), Duration::from_millis(250));
        assert_eq!(d("0.000000001s").unwrap(), Duration::from_nanos(1));
        assert_eq!(d("250ms").unwrap(), Duration::from_millis(250));
        assert!(d("0.0000000001s").is_err(), "ten decimals");
        assert!(d("-1s").is_err());
        assert!(d("s").is_err());
        assert!(d(".s").is_err());
        assert!(d("1.2.3s").is_err());
        assert!(d("soon").is_err());
    }

    #[test]
    fn field_names_match_in_every_casing_and_twice_is_an_error() {
        let v: Value = serde_json::json!({"MaxAttempts": 4, "initial_backoff": "1s", "x": 1});
        let f = Fields::new("p", &v).unwrap();
        assert_eq!(f.uint("maxAttempts").unwrap(), Some(4));
        assert_eq!(
            f.duration("initialBackoff").unwrap(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(f.uint("maxBackoff").unwrap(), None);
        let twice: Value = serde_json::json!({"maxAttempts": 4, "max_attempts": 5});
        let e = Fields::new("p", &twice).err().unwrap().to_string();
        assert!(
            e.contains("max_attempts") && e.contains("maxAttempts"),
            "{e}"
        );
        let e = f.duration("MaxAttempts").unwrap_err().to_string();
        assert!(e.contains("`p.MaxAttempts`"), "{e}");
    }
}
