//! gRPC status codes without a dependency: names, sets, and the sets that steadfast's
//! policies start from.

use std::fmt;

/// A gRPC status code, numbered as on the wire (0..=16).
///
/// ```
/// use steadfast_spec::Code;
///
/// assert_eq!(Code::Unavailable as i32, 14);
/// assert_eq!(Code::from_i32(14), Some(Code::Unavailable));
/// assert_eq!(Code::Unavailable.name(), "Unavailable");
/// assert_eq!(Code::Unavailable.grpc_name(), "UNAVAILABLE");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)] // The variants are gRPC's, documented there.
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// Every code in numeric order, with its CamelCase name (as `tonic::Code` spells it) and its
/// gRPC name (as service config JSON spells it).
const TABLE: [(Code, &str, &str); 17] = [
    (Code::Ok, "Ok", "OK"),
    (Code::Cancelled, "Cancelled", "CANCELLED"),
    (Code::Unknown, "Unknown", "UNKNOWN"),
    (Code::InvalidArgument, "InvalidArgument", "INVALID_ARGUMENT"),
    (
        Code::DeadlineExceeded,
        "DeadlineExceeded",
        "DEADLINE_EXCEEDED",
    ),
    (Code::NotFound, "NotFound", "NOT_FOUND"),
    (Code::AlreadyExists, "AlreadyExists", "ALREADY_EXISTS"),
    (
        Code::PermissionDenied,
        "PermissionDenied",
        "PERMISSION_DENIED",
    ),
    (
        Code::ResourceExhausted,
        "ResourceExhausted",
        "RESOURCE_EXHAUSTED",
    ),
    (
        Code::FailedPrecondition,
        "FailedPrecondition",
        "FAILED_PRECONDITION",
    ),
    (Code::Aborted, "Aborted", "ABORTED"),
    (Code::OutOfRange, "OutOfRange", "OUT_OF_RANGE"),
    (Code::Unimplemented, "Unimplemented", "UNIMPLEMENTED"),
    (Code::Internal, "Internal", "INTERNAL"),
    (Code::Unavailable, "Unavailable", "UNAVAILABLE"),
    (Code::DataLoss, "DataLoss", "DATA_LOSS"),
    (Code::Unauthenticated, "Unauthenticated", "UNAUTHENTICATED"),
];

impl Code {
    /// Every code, in numeric order.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::Code::ALL.len(), 17);
    /// ```
    pub const ALL: [Code; 17] = {
        let mut all = [Code::Ok; 17];
        let mut i = 0;
        while i < 17 {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    /// The code numbered `n`, if `n` is in 0..=16.
    ///
    /// ```
    /// use steadfast_spec::Code;
    /// assert_eq!(Code::from_i32(5), Some(Code::NotFound));
    /// assert_eq!(Code::from_i32(17), None);
    /// ```
    pub const fn from_i32(n: i32) -> Option<Code> {
        if 0 <= n && n < 17 {
            Some(TABLE[n as usize].0)
        } else {
            None
        }
    }

    /// The CamelCase name, as `tonic::Code` and the `#[resilient_client]` attribute spell it.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::Code::ResourceExhausted.name(), "ResourceExhausted");
    /// ```
    pub const fn name(self) -> &'static str {
        TABLE[self as usize].1
    }

    /// The gRPC name, as service config JSON spells it.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::Code::ResourceExhausted.grpc_name(), "RESOURCE_EXHAUSTED");
    /// ```
    pub const fn grpc_name(self) -> &'static str {
        TABLE[self as usize].2
    }

    /// The code with exactly this CamelCase name, as the `#[resilient_client]` attribute
    /// writes it. The error says what to write instead, with a suggestion when the name is
    /// close to a real one.
    ///
    /// ```
    /// use steadfast_spec::Code;
    ///
    /// assert_eq!(Code::from_name("Unavailable"), Ok(Code::Unavailable));
    /// assert_eq!(
    ///     Code::from_name("UNAVAILABLE").unwrap_err(),
    ///     "unknown status code `UNAVAILABLE`; write `Unavailable`"
    /// );
    /// ```
    pub fn from_name(name: &str) -> Result<Code, String> {
        if let Some((code, _, _)) = TABLE.iter().find(|(_, camel, _)| *camel == name) {
            return Ok(*code);
        }
        Err(match Code::suggest(name) {
            Some(hint) => format!("unknown status code `{name}`; write `{}`", hint.name()),
            None => format!(
                "unknown status code `{name}`; expected a tonic::Code name such as Unavailable, ResourceExhausted, Aborted, Internal"
            ),
        })
    }

    /// Parses a code as service config writes it (`"UNAVAILABLE"`), in CamelCase
    /// (`"Unavailable"`), in any case with or without underscores, or as its number (`"14"`).
    ///
    /// ```
    /// use steadfast_spec::Code;
    ///
    /// assert_eq!(Code::parse("RESOURCE_EXHAUSTED"), Ok(Code::ResourceExhausted));
    /// assert_eq!(Code::parse("resourceexhausted"), Ok(Code::ResourceExhausted));
    /// assert_eq!(Code::parse("8"), Ok(Code::ResourceExhausted));
    /// assert!(Code::parse("UNAVAILIBLE").unwrap_err().contains("did you mean UNAVAILABLE?"));
    /// ```
    pub fn parse(text: &str) -> Result<Code, String> {
        let text = text.trim();
        if let Ok(n) = text.parse::<i64>() {
            return i32::try_from(n)
                .ok()
                .and_then(Code::from_i32)
                .ok_or_else(|| {
                    format!("`{n}` is not a gRPC status code; write a number in 0..=16")
                });
        }
        let folded = fold(text);
        if let Some((code, _, _)) = TABLE.iter().find(|(_, camel, _)| fold(camel) == folded) {
            return Ok(*code);
        }
        Err(match Code::suggest(text) {
            Some(hint) => format!(
                "`{text}` is not a gRPC status code name; did you mean {}?",
                hint.grpc_name()
            ),
            None => format!(
                "`{text}` is not a gRPC status code name; use e.g. UNAVAILABLE or Unavailable"
            ),
        })
    }

    /// The code whose name `name` most likely misspells: the same letters in another case or
    /// with underscores, or (for names of four letters or more) at most two letters off.
    /// `None` when nothing is that close.
    ///
    /// ```
    /// use steadfast_spec::Code;
    ///
    /// assert_eq!(Code::suggest("DEADLINE_EXCEEDED"), Some(Code::DeadlineExceeded));
    /// assert_eq!(Code::suggest("Unavailible"), Some(Code::Unavailable));
    /// assert_eq!(Code::suggest("Flaky"), None);
    /// ```
    pub fn suggest(name: &str) -> Option<Code> {
        let folded = fold(name);
        if let Some((code, _, _)) = TABLE.iter().find(|(_, camel, _)| fold(camel) == folded) {
            return Some(*code);
        }
        if folded.chars().count() < 4 {
            return None;
        }
        TABLE
            .iter()
            .map(|(code, camel, _)| (edit_distance(&folded, &fold(camel)), *code))
            .filter(|(distance, _)| *distance <= 2)
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, code)| code)
    }
}

impl fmt::Display for Code {
    /// The CamelCase name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Lower case without underscores: `RESOURCE_EXHAUSTED` and `ResourceExhausted` fold alike.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Levenshtein distance, for spelling suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A set of [`Code`]s as a bit mask (bit n is code n): copyable and `const`-constructible.
///
/// ```
/// use steadfast_spec::{Code, CodeSet};
///
/// let set = CodeSet::EMPTY.with(Code::Unavailable).with(Code::Aborted);
/// assert!(set.contains(Code::Unavailable));
/// assert_eq!(set.iter().collect::<Vec<_>>(), [Code::Aborted, Code::Unavailable]);
/// assert_eq!(CodeSet::from_bits(set.bits()), set);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CodeSet(u32);

impl CodeSet {
    /// The empty set.
    ///
    /// ```
    /// assert!(steadfast_spec::CodeSet::EMPTY.is_empty());
    /// ```
    pub const EMPTY: CodeSet = CodeSet(0);

    /// What a retry policy retries unless told otherwise: `{Unavailable}` (gRFC A6 names no
    /// default; `Unavailable` is the one code every gRPC implementation agrees is safe).
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// assert_eq!(CodeSet::DEFAULT_RETRYABLE, CodeSet::EMPTY.with(Code::Unavailable));
    /// ```
    pub const DEFAULT_RETRYABLE: CodeSet = CodeSet::EMPTY.with(Code::Unavailable);

    /// Codes that are never retried: the request itself is wrong, so sending it again cannot
    /// succeed (InvalidArgument, NotFound, AlreadyExists, PermissionDenied, Unauthenticated,
    /// FailedPrecondition, OutOfRange, Unimplemented). `Ok` is not a failure at all, so it
    /// cannot be retried either (see [`RetrySpec::validate`](crate::RetrySpec::validate)).
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// assert!(CodeSet::NEVER_RETRYABLE.contains(Code::NotFound));
    /// assert!(!CodeSet::NEVER_RETRYABLE.contains(Code::Unavailable));
    /// ```
    pub const NEVER_RETRYABLE: CodeSet = CodeSet::EMPTY
        .with(Code::InvalidArgument)
        .with(Code::NotFound)
        .with(Code::AlreadyExists)
        .with(Code::PermissionDenied)
        .with(Code::Unauthenticated)
        .with(Code::FailedPrecondition)
        .with(Code::OutOfRange)
        .with(Code::Unimplemented);

    /// The codes that mean the downstream itself is failing: what a breaker counts as a
    /// failure by default, and what counts against an endpoint in outlier detection.
    /// Unavailable, DeadlineExceeded, Internal, Unknown, ResourceExhausted and DataLoss; every
    /// other code means the downstream answered.
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// assert!(CodeSet::DEFAULT_FAILURES.contains(Code::DeadlineExceeded));
    /// assert!(!CodeSet::DEFAULT_FAILURES.contains(Code::NotFound));
    /// ```
    pub const DEFAULT_FAILURES: CodeSet = CodeSet::EMPTY
        .with(Code::Unavailable)
        .with(Code::DeadlineExceeded)
        .with(Code::Internal)
        .with(Code::Unknown)
        .with(Code::ResourceExhausted)
        .with(Code::DataLoss);

    /// Returns this set with `code` added.
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// assert!(CodeSet::EMPTY.with(Code::Aborted).contains(Code::Aborted));
    /// ```
    pub const fn with(self, code: Code) -> CodeSet {
        CodeSet(self.0 | 1 << code as u32)
    }

    /// Returns this set with `code` removed.
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// assert_eq!(CodeSet::DEFAULT_RETRYABLE.without(Code::Unavailable), CodeSet::EMPTY);
    /// ```
    pub const fn without(self, code: Code) -> CodeSet {
        CodeSet(self.0 & !(1 << code as u32))
    }

    /// Builds a set from its bit mask (bit n is code n). Bits above 16 are ignored.
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// assert_eq!(CodeSet::from_bits(1 << 14), CodeSet::EMPTY.with(Code::Unavailable));
    /// assert_eq!(CodeSet::from_bits(u32::MAX).len(), 17);
    /// ```
    pub const fn from_bits(bits: u32) -> CodeSet {
        CodeSet(bits & 0x1_ffff)
    }

    /// The bit mask.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::CodeSet::DEFAULT_RETRYABLE.bits(), 1 << 14);
    /// ```
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether `code` is in the set.
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// assert!(CodeSet::DEFAULT_RETRYABLE.contains(Code::Unavailable));
    /// ```
    pub const fn contains(self, code: Code) -> bool {
        self.0 & 1 << code as u32 != 0
    }

    /// The codes both sets contain.
    ///
    /// ```
    /// use steadfast_spec::CodeSet;
    /// assert!(CodeSet::DEFAULT_FAILURES.intersection(CodeSet::NEVER_RETRYABLE).is_empty());
    /// ```
    pub const fn intersection(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0 & other.0)
    }

    /// The codes either set contains.
    ///
    /// ```
    /// use steadfast_spec::CodeSet;
    /// assert_eq!(CodeSet::DEFAULT_FAILURES.union(CodeSet::NEVER_RETRYABLE).len(), 14);
    /// ```
    pub const fn union(self, other: CodeSet) -> CodeSet {
        CodeSet(self.0 | other.0)
    }

    /// Whether the set is empty.
    ///
    /// ```
    /// assert!(!steadfast_spec::CodeSet::DEFAULT_RETRYABLE.is_empty());
    /// ```
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many codes the set holds.
    ///
    /// ```
    /// assert_eq!(steadfast_spec::CodeSet::NEVER_RETRYABLE.len(), 8);
    /// ```
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The codes, in numeric order.
    ///
    /// ```
    /// use steadfast_spec::{Code, CodeSet};
    /// let set = CodeSet::EMPTY.with(Code::Unavailable).with(Code::Cancelled);
    /// assert_eq!(set.iter().collect::<Vec<_>>(), [Code::Cancelled, Code::Unavailable]);
    /// ```
    pub fn iter(self) -> impl Iterator<Item = Code> {
        Code::ALL
            .into_iter()
            .filter(move |code| self.contains(*code))
    }
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Code::name)).finish()
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
    fn table_is_in_numeric_order_and_names_round_trip() {
        for (n, (code, camel, grpc)) in TABLE.iter().enumerate() {
            assert_eq!(*code as usize, n);
            assert_eq!(Code::from_i32(n as i32), Some(*code));
            assert_eq!(Code::from_name(camel), Ok(*code));
            assert_eq!(Code::parse(camel), Ok(*code));
            assert_eq!(Code::parse(grpc), Ok(*code));
            assert_eq!(Code::parse(&n.to_string()), Ok(*code));
            assert_eq!(fold(camel), fold(grpc));
        }
        assert_eq!(Code::from_i32(-1), None);
        assert_eq!(Code::from_i32(17), None);
    }

    #[test]
    fn parse_rejects_with_a_reason() {
        assert!(Code::parse("17").unwrap_err().contains("0..=16"));
        assert!(Code::parse("-1").unwrap_err().contains("0..=16"));
        assert!(Code::parse("99999999999").unwrap_err().contains("0..=16"));
        let e = Code::parse("Unavailible").unwrap_err();
        assert!(
            e.contains("`Unavailible`") && e.contains("UNAVAILABLE"),
            "{e}"
        );
        let e = Code::parse("Flaky").unwrap_err();
        assert!(
            e.contains("`Flaky`") && e.contains("e.g. UNAVAILABLE"),
            "{e}"
        );
    }

    #[test]
    fn from_name_wants_camel_case_and_says_so() {
        assert_eq!(
            Code::from_name("NOT_FOUND").unwrap_err(),
            "unknown status code `NOT_FOUND`; write `NotFound`"
        );
        assert_eq!(
            Code::from_name("Unavailible").unwrap_err(),
            "unknown status code `Unavailible`; write `Unavailable`"
        );
        assert!(
            Code::from_name("Flaky")
                .unwrap_err()
                .contains("such as Unavailable")
        );
    }

    #[test]
    fn suggestions_stay_close() {
        assert_eq!(Code::suggest("unavailable"), Some(Code::Unavailable));
        assert_eq!(Code::suggest("Interal"), Some(Code::Internal));
        assert_eq!(Code::suggest("Abortd"), Some(Code::Aborted));
        assert_eq!(Code::suggest("Okay"), Some(Code::Ok));
        assert_eq!(Code::suggest("Broken"), None);
        assert_eq!(Code::suggest(""), None);
        assert_eq!(Code::suggest("no"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_sets_are_what_the_docs_say() {
        assert_eq!(
            CodeSet::NEVER_RETRYABLE.iter().collect::<Vec<_>>(),
            [
                Code::InvalidArgument,
                Code::NotFound,
                Code::AlreadyExists,
                Code::PermissionDenied,
                Code::FailedPrecondition,
                Code::OutOfRange,
                Code::Unimplemented,
                Code::Unauthenticated,
            ]
        );
        assert_eq!(
            CodeSet::DEFAULT_FAILURES.iter().collect::<Vec<_>>(),
            [
                Code::Unknown,
                Code::DeadlineExceeded,
                Code::ResourceExhausted,
                Code::Internal,
                Code::Unavailable,
                Code::DataLoss,
            ]
        );
        assert_eq!(
            CodeSet::DEFAULT_RETRYABLE.iter().collect::<Vec<_>>(),
            [Code::Unavailable]
        );
        // No default retries or counts as failure a code that is never retryable.
        assert!(
            CodeSet::DEFAULT_RETRYABLE
                .intersection(CodeSet::NEVER_RETRYABLE)
                .is_empty()
        );
        assert!(
            CodeSet::DEFAULT_FAILURES
                .intersection(CodeSet::NEVER_RETRYABLE)
                .is_empty()
        );
    }

    #[test]
    fn set_operations() {
        let s = CodeSet::EMPTY.with(Code::Ok).with(Code::Unauthenticated);
        assert_eq!(s.len(), 2);
        assert_eq!(s.bits(), 1 | 1 << 16);
        assert_eq!(
            s.without(Code::Ok),
            CodeSet::EMPTY.with(Code::Unauthenticated)
        );
        assert_eq!(CodeSet::from_bits(u32::MAX).len(), 17);
        assert_eq!(s.union(CodeSet::DEFAULT_RETRYABLE).len(), 3);
        assert!(CodeSet::EMPTY.is_empty());
        assert_eq!(format!("{s:?}"), "{\"Ok\", \"Unauthenticated\"}");
    }
}
