//! Trace and span identifiers: random, never all zero, lowercase hex on the wire.

use std::fmt;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (which must be twice as long).
pub(crate) fn write_hex(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const NIBBLES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[HEX[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Parses lowercase hex (exactly `2 * N` digits) into bytes; uppercase is rejected, as the
/// specification requires.
pub(crate) fn parse_lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        bad |= high | low;
        *byte = high << 4 | low;
    }
    // A digit's value fits in four bits; the marker of anything else does not.
    (bad & 0xf0 == 0).then_some(out)
}

/// A 128-bit trace id, shared by every span of one request across services.
///
/// ```
/// use steadfast::trace::TraceId;
/// let id = TraceId::random();
/// assert_eq!(id.to_string().len(), 32);
/// assert_eq!(TraceId::from_hex(&id.to_string()), Some(id));
/// assert_eq!(TraceId::from_hex("00000000000000000000000000000000"), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// A 64-bit span id: one hop (one service's handling of a request).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    /// A random, non-zero id.
    pub fn random() -> TraceId {
        loop {
            let id = fastrand::u128(..).to_be_bytes();
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }
    /// From 32 lowercase hex digits; `None` when malformed or all zero.
    pub fn from_hex(text: &str) -> Option<TraceId> {
        parse_lower_hex::<16>(text.as_bytes())
            .filter(|b| *b != [0; 16])
            .map(TraceId)
    }
    /// From raw bytes; `None` when all zero.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<TraceId> {
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }
    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
    /// Lowercase hex, without allocating.
    pub fn to_hex(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        write_hex(&self.0, &mut out);
        out
    }
}

impl SpanId {
    /// A random, non-zero id.
    pub fn random() -> SpanId {
        loop {
            let id = fastrand::u64(..).to_be_bytes();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }
    /// From 16 lowercase hex digits; `None` when malformed or all zero.
    pub fn from_hex(text: &str) -> Option<SpanId> {
        parse_lower_hex::<8>(text.as_bytes())
            .filter(|b| *b != [0; 8])
            .map(SpanId)
    }
    /// From raw bytes; `None` when all zero.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<SpanId> {
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }
    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
    /// Lowercase hex, without allocating.
    pub fn to_hex(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        write_hex(&self.0, &mut out);
        out
    }
}

macro_rules! hex_fmt {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let hex = self.to_hex();
                f.write_str(std::str::from_utf8(&hex).expect("hex is ASCII"))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($t))
            }
        }
    };
}
hex_fmt!(TraceId);
hex_fmt!(SpanId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_bytes_parses_only_as_lowercase_hex() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let want = digit(a).zip(digit(b)).map(|(h, l)| [h << 4 | l]);
                assert_eq!(parse_lower_hex::<1>(&[a, b]), want, "{a:#x} {b:#x}");
                if let Some(bytes) = want {
                    let mut out = [0; 2];
                    write_hex(&bytes, &mut out);
                    assert_eq!(out, [a, b]);
                }
            }
        }
        assert_eq!(parse_lower_hex::<2>(b"abc"), None);
    }
}
