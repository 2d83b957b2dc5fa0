//! Sets of gRPC status codes, and the codes that are never retried.
//!
//! The tables live in `steadfast-spec`, shared with `#[resilient_client]`; this module puts
//! them in terms of [`tonic::Code`].

use std::fmt;

use steadfast_spec::code as spec;
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
pub struct CodeSet(spec::CodeSet);

impl CodeSet {
    /// The empty set.
    pub const EMPTY: CodeSet = CodeSet(spec::CodeSet::EMPTY);

    /// The default retryable set of gRFC A6 as used here: `{Unavailable}`.
    pub const DEFAULT_RETRYABLE: CodeSet = CodeSet(spec::CodeSet::DEFAULT_RETRYABLE);

    /// Codes that are never retried, even when listed: the request itself is wrong, so
    /// sending it again cannot succeed (InvalidArgument, NotFound, AlreadyExists,
    /// PermissionDenied, Unauthenticated, FailedPrecondition, OutOfRange, Unimplemented).
    pub const NEVER_RETRYABLE: CodeSet = CodeSet(spec::CodeSet::NEVER_RETRYABLE);

    /// Returns this set with `code` added.
    pub const fn with(self, code: Code) -> CodeSet {
        CodeSet(self.0.with(to_spec(code)))
    }

    /// Builds a set from its raw bit mask (bit n is code n). Bits above 16 are ignored.
    pub const fn from_bits(bits: u32) -> CodeSet {
        CodeSet(spec::CodeSet::from_bits(bits))
    }

    /// The raw bit mask.
    pub const fn bits(self) -> u32 {
        self.0.bits()
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: Code) -> bool {
        self.0.contains(to_spec(code))
    }

    /// The codes both sets contain.
    pub const fn intersection(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0.intersection(other.0))
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the codes in numeric order.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        self.0.iter().map(from_spec)
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

    pub(crate) const fn from_spec(set: spec::CodeSet) -> CodeSet {
        CodeSet(set)
    }

    pub(crate) const fn to_spec(self) -> spec::CodeSet {
        self.0
    }
}

/// Parses one status code name (any case, with or without underscores) or number.
///
/// ```
/// use steadfast::code::parse_code;
/// use tonic::Code;
///
/// assert_eq!(parse_code("DEADLINE_EXCEEDED"), Ok(Code::DeadlineExceeded));
/// assert_eq!(parse_code("4"), Ok(Code::DeadlineExceeded));
/// assert!(parse_code("DEADLINE_EXCEDED").unwrap_err().contains("did you mean DEADLINE_EXCEEDED?"));
/// ```
pub fn parse_code(name: &str) -> Result<Code, String> {
    spec::Code::parse(name).map(from_spec)
}

/// The canonical CamelCase name of a code.
///
/// ```
/// assert_eq!(steadfast::code::code_name(tonic::Code::Unavailable), "Unavailable");
/// ```
pub fn code_name(code: Code) -> &'static str {
    to_spec(code).name()
}

/// The dependency-free code of a tonic code.
pub(crate) const fn to_spec(code: Code) -> spec::Code {
    match spec::Code::from_i32(code as i32) {
        Some(code) => code,
        // tonic::Code has exactly the 17 codes 0..=16.
        None => panic!("tonic::Code outside 0..=16"),
    }
}

/// The tonic code of a dependency-free code.
pub(crate) fn from_spec(code: spec::Code) -> Code {
    Code::from_i32(code as i32)
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
        for code in spec::Code::ALL.map(from_spec) {
            let name = code_name(code);
            assert_eq!(parse_code(name), Ok(code));
            assert_eq!(to_spec(code) as i32, code as i32);
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

    #[test]
    fn the_bits_are_the_spec_bits() {
        let set = CodeSet::EMPTY.with(Code::Ok).with(Code::Unauthenticated);
        assert_eq!(set.bits(), 1 | 1 << 16);
        assert_eq!(CodeSet::from_bits(set.bits()), set);
        assert_eq!(format!("{set:?}"), "{\"Ok\", \"Unauthenticated\"}");
    }
}
