//! Sets of gRPC status codes, and the codes that are never retried.

use std::fmt;
use tonic::Code;

/// A set of [`tonic::Code`]s, stored as a bit mask (copyable, `const`-constructible).
///
/// ```
/// use steadfast::code::CodeSet;
/// use tonic::Code;
///
/// let set = CodeSet::EMPTY.with(Code::Unavailable).with(Code::ResourceExhausted);
/// assert!(set.contains(Code::Unavailable));
/// assert!(!set.contains(Code::Internal));
/// assert_eq!(CodeSet::parse_names(["UNAVAILABLE", "resource_exhausted"]).unwrap(), set);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CodeSet(u32);

/// Every gRPC status code, in numeric order, with its canonical CamelCase name.
pub(crate) const ALL_CODES: [(Code, &str); 17] = [
    (Code::Ok, "Ok"),
    (Code::Cancelled, "Cancelled"),
    (Code::Unknown, "Unknown"),
    (Code::InvalidArgument, "InvalidArgument"),
    (Code::DeadlineExceeded, "DeadlineExceeded"),
    (Code::NotFound, "NotFound"),
    (Code::AlreadyExists, "AlreadyExists"),
    (Code::PermissionDenied, "PermissionDenied"),
    (Code::ResourceExhausted, "ResourceExhausted"),
    (Code::FailedPrecondition, "FailedPrecondition"),
    (Code::Aborted, "Aborted"),
    (Code::OutOfRange, "OutOfRange"),
    (Code::Unimplemented, "Unimplemented"),
    (Code::Internal, "Internal"),
    (Code::Unavailable, "Unavailable"),
    (Code::DataLoss, "DataLoss"),
    (Code::Unauthenticated, "Unauthenticated"),
];

impl CodeSet {
    /// The empty set.
    pub const EMPTY: CodeSet = CodeSet(0);

    /// The default retryable set of gRFC A6 as used here: `{Unavailable}`.
    pub const DEFAULT_RETRYABLE: CodeSet = CodeSet::EMPTY.with(Code::Unavailable);

    /// Codes that are never retried, even when listed: the request itself is wrong, so
    /// sending it again cannot succeed (InvalidArgument, NotFound, AlreadyExists,
    /// PermissionDenied, Unauthenticated, FailedPrecondition, OutOfRange, Unimplemented).
    pub const NEVER_RETRYABLE: CodeSet = CodeSet::EMPTY
        .with(Code::InvalidArgument)
        .with(Code::NotFound)
        .with(Code::AlreadyExists)
        .with(Code::PermissionDenied)
        .with(Code::Unauthenticated)
        .with(Code::FailedPrecondition)
        .with(Code::OutOfRange)
        .with(Code::Unimplemented);

    /// Returns this set with `code` added.
    pub const fn with(self, code: Code) -> CodeSet {
        CodeSet(self.0 | (1 << code as u32))
    }

    /// Builds a set from its raw bit mask (bit n is code n). Bits above 16 are ignored.
    pub const fn from_bits(bits: u32) -> CodeSet {
        CodeSet(bits & 0x1_ffff)
    }

    /// The raw bit mask.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: Code) -> bool {
        self.0 & (1 << code as u32) != 0
    }

    /// The codes both sets contain.
    pub const fn intersection(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Iterates over the codes in numeric order.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        ALL_CODES
            .iter()
            .map(|(code, _)| *code)
            .filter(move |code| self.contains(*code))
    }

    /// Parses code names as gRPC service config writes them (`"UNAVAILABLE"`), in CamelCase
    /// (`"Unavailable"`), or as numbers (`"14"`). The error names the first unknown entry.
    pub fn parse_names<I, S>(names: I) -> Result<CodeSet, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        names.into_iter().try_fold(CodeSet::EMPTY, |set, name| {
            parse_code(name.as_ref()).map(|code| set.with(code))
        })
    }
}

/// Parses one status code name (any case, with or without underscores) or number.
pub fn parse_code(name: &str) -> Result<Code, String> {
    if let Ok(n) = name.trim().parse::<i32>() {
        return match Code::from_i32(n) {
            Code::Unknown if n != 2 => Err(format!("`{n}` is not a gRPC status code (0..=16)")),
            code => Ok(code),
        };
    }
    let folded: String = name
        .chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    ALL_CODES
        .iter()
        .find(|(_, canonical)| canonical.to_ascii_lowercase() == folded)
        .map(|(code, _)| *code)
        .ok_or_else(|| {
            format!("`{name}` is not a gRPC status code name; use e.g. UNAVAILABLE or Unavailable")
        })
}

/// The canonical CamelCase name of a code.
pub fn code_name(code: Code) -> &'static str {
    ALL_CODES[code as usize].1
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(code_name)).finish()
    }
}

impl FromIterator<Code> for CodeSet {
    fn from_iter<T: IntoIterator<Item = Code>>(iter: T) -> Self {
        iter.into_iter().fold(CodeSet::EMPTY, CodeSet::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (code, name) in ALL_CODES {
            assert_eq!(parse_code(name), Ok(code));
            assert_eq!(code_name(code), name);
            assert_eq!(parse_code(&(code as i32).to_string()), Ok(code));
        }
        assert_eq!(
            parse_code("RESOURCE_EXHAUSTED"),
            Ok(Code::ResourceExhausted)
        );
        assert!(parse_code("17").is_err());
        assert!(
            parse_code("Unavailible")
                .unwrap_err()
                .contains("Unavailible")
        );
    }

    #[test]
    fn never_retryable_has_the_eight_codes() {
        assert_eq!(CodeSet::NEVER_RETRYABLE.iter().count(), 8);
        assert!(!CodeSet::NEVER_RETRYABLE.contains(Code::Unavailable));
        assert!(CodeSet::NEVER_RETRYABLE.contains(Code::Unimplemented));
    }
}
