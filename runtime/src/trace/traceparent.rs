//! The `traceparent` header (W3C Trace Context Level 2).
//!
//! `version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex. Version `ff` is
//! invalid; version `00` is exactly 55 characters; a higher version is at least 55
//! characters, its first four fields parsed as version 00's and the flags followed by the end
//! or a `-`, and anything after ignored. All-zero ids are invalid. Surrounding spaces and tabs
//! are trimmed. Unknown flag bits are accepted and zeroed when the context is propagated.

use super::ids::{SpanId, TraceId, parse_lower_hex};

/// Trace flags: `sampled` (0x01) and, from Level 2, `random` (0x02).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(u8);

impl TraceFlags {
    /// The caller may have recorded trace data.
    pub const SAMPLED: TraceFlags = TraceFlags(0x01);
    /// At least the right-most 7 bytes of the trace id are random.
    pub const RANDOM: TraceFlags = TraceFlags(0x02);
    const KNOWN: u8 = 0x03;

    /// From the raw byte (unknown bits kept until propagation).
    pub const fn from_u8(bits: u8) -> TraceFlags {
        TraceFlags(bits)
    }
    /// The raw byte.
    pub const fn to_u8(self) -> u8 {
        self.0
    }
    /// Both sets of bits.
    pub const fn union(self, other: TraceFlags) -> TraceFlags {
        TraceFlags(self.0 | other.0)
    }
    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: TraceFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// The flags to send: unknown bits zeroed, as the specification requires.
    pub const fn outgoing(self) -> TraceFlags {
        TraceFlags(self.0 & Self::KNOWN)
    }
}

/// A parsed `traceparent`: the caller's trace id, its span id (our parent) and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span: the parent of ours.
    pub parent_id: SpanId,
    /// The flags as received.
    pub flags: TraceFlags,
}

/// Why a `traceparent` was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceparentError {
    /// The version is not two lowercase hex digits followed by `-`.
    Version,
    /// Version `ff` is forbidden.
    ForbiddenVersion,
    /// Wrong length for the version.
    Length,
    /// The trace id is not 32 lowercase hex digits.
    TraceId,
    /// The trace id is all zero.
    ZeroTraceId,
    /// The parent id is not 16 lowercase hex digits.
    ParentId,
    /// The parent id is all zero.
    ZeroParentId,
    /// The flags are not two lowercase hex digits.
    Flags,
    /// A field separator is missing.
    Separator,
}

impl std::fmt::Display for TraceparentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TraceparentError::Version => "the version is not two lowercase hex digits",
            TraceparentError::ForbiddenVersion => "version ff is forbidden",
            TraceparentError::Length => "wrong length for its version",
            TraceparentError::TraceId => "the trace id is not 32 lowercase hex digits",
            TraceparentError::ZeroTraceId => "the trace id is all zero",
            TraceparentError::ParentId => "the parent id is not 16 lowercase hex digits",
            TraceparentError::ZeroParentId => "the parent id is all zero",
            TraceparentError::Flags => "the flags are not two lowercase hex digits",
            TraceparentError::Separator => "a '-' separator is missing",
        })
    }
}

impl Traceparent {
    /// Parses a header value.
    ///
    /// ```
    /// use steadfast::trace::Traceparent;
    ///
    /// let tp = Traceparent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    /// assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    /// assert!(Traceparent::parse(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_err());
    /// ```
    pub fn parse(value: &[u8]) -> Result<Traceparent, TraceparentError> {
        let v = trim_ows(value);
        if v.len() < 3 || v[2] != b'-' {
            return Err(TraceparentError::Version);
        }
        let version = parse_lower_hex::<1>(&v[..2]).ok_or(TraceparentError::Version)?[0];
        if version == 0xff {
            return Err(TraceparentError::ForbiddenVersion);
        }
        let length_ok = if version == 0 {
            v.len() == 55
        } else {
            v.len() == 55 || (v.len() > 55 && v[55] == b'-')
        };
        if v.len() < 55 {
            return Err(TraceparentError::Length);
        }
        if v[35] != b'-' || v[52] != b'-' {
            return Err(TraceparentError::Separator);
        }
        let trace = parse_lower_hex::<16>(&v[3..35]).ok_or(TraceparentError::TraceId)?;
        let parent = parse_lower_hex::<8>(&v[36..52]).ok_or(TraceparentError::ParentId)?;
        let flags = parse_lower_hex::<1>(&v[53..55]).ok_or(TraceparentError::Flags)?[0];
        if !length_ok {
            return Err(if version == 0 {
                TraceparentError::Length
            } else {
                TraceparentError::Separator
            });
        }
        Ok(Traceparent {
            trace_id: TraceId::from_bytes(trace).ok_or(TraceparentError::ZeroTraceId)?,
            parent_id: SpanId::from_bytes(parent).ok_or(TraceparentError::ZeroParentId)?,
            flags: TraceFlags::from_u8(flags),
        })
    }
}

/// Formats a version-00 `traceparent` without allocating.
pub(crate) fn format(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    out[3..35].copy_from_slice(&trace_id.to_hex());
    out[36..52].copy_from_slice(&span_id.to_hex());
    super::ids::write_hex(&[flags.outgoing().to_u8()], &mut out[53..55]);
    out
}

pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const P: &str = "00f067aa0ba902b7";

    fn parse(s: &str) -> Result<Traceparent, TraceparentError> {
        Traceparent::parse(s.as_bytes())
    }

    #[test]
    fn the_specifications_cases() {
        use TraceparentError::*;
        let z32 = "0".repeat(32);
        let cases: Vec<(String, Result<u8, TraceparentError>)> = vec![
            (format!("00-{T}-{P}-01"), Ok(0x01)),
            (format!("00-{T}-{P}-03"), Ok(0x03)),
            (format!("00-{T}-{P}-09"), Ok(0x09)),
            (format!("00-{T}-{P}-00"), Ok(0x00)),
            (format!("ff-{T}-{P}-01"), Err(ForbiddenVersion)),
            (format!("00-{z32}-{P}-01"), Err(ZeroTraceId)),
            (format!("00-{T}-0000000000000000-01"), Err(ZeroParentId)),
            (format!("00-{}-{P}-01", T.to_uppercase()), Err(TraceId)),
            (format!("00-{T}-{}-01", P.to_uppercase()), Err(ParentId)),
            (format!("00-{T}-{P}-0A"), Err(Flags)),
            (
                format!("00-{T}-{P}-01-what-the-future-will-be-like"),
                Err(Length),
            ),
            (format!("00-{T}-{P}-1"), Err(Length)),
            (format!("00-{T}-{P}-001"), Err(Length)),
            (format!("0-{T}-{P}-01"), Err(Version)),
            (format!("000-{T}-{P}-01"), Err(Version)),
            (format!("0g-{T}-{P}-01"), Err(Version)),
            (
                format!("cc-{T}-{P}-01-what-the-future-will-be-like"),
                Ok(0x01),
            ),
            (format!("cc-{T}-{P}-01"), Ok(0x01)),
            (format!("cc-{T}-{P}-01.what"), Err(Separator)),
            (format!("00_{T}-{P}-01"), Err(Version)),
            (format!("00-{T}_{P}-01"), Err(Separator)),
            (format!(" \t00-{T}-{P}-01 \t"), Ok(0x01)),
            (String::new(), Err(Version)),
        ];
        for (input, expected) in cases {
            let got = parse(&input).map(|tp| tp.flags.to_u8());
            assert_eq!(got, expected, "traceparent {input:?}");
        }
    }

    #[test]
    fn format_zeroes_unknown_flags() {
        let tp = parse(&format!("00-{T}-{P}-0b")).unwrap();
        let out = format(tp.trace_id, tp.parent_id, tp.flags);
        assert_eq!(std::str::from_utf8(&out).unwrap(), format!("00-{T}-{P}-03"));
    }
}
