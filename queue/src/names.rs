//! Function names: what the gateway accepts and how a name is spelled in subjects and consumer
//! names. Invariant: a `FunctionName` is always valid, so no later layer re-checks it.

use std::fmt;

/// Longest accepted name, namespace included. Kubernetes caps names at 63 characters; two of them
/// and the dot fit, and NATS subjects and consumer names stay far below their own limits.
pub const MAX_NAME_LEN: usize = 127;

/// A validated function name: `[a-zA-Z0-9_-]+`, optionally followed by `.namespace` of the same
/// characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionName(String);

/// Why a name was refused; the gateway shows this text in its 400 body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("function name is empty")]
    Empty,
    #[error("function name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("function name may only hold [a-zA-Z0-9_-] and one '.' before a namespace")]
    BadCharacter,
}

fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FunctionName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let ok = match raw.split_once('.') {
            None => valid_part(raw),
            Some((name, ns)) => valid_part(name) && valid_part(ns),
        };
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::BadCharacter)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without its namespace, as used in the default URL template's `{name}`.
    pub fn base(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(n, _)| n)
    }

    /// The namespace, when the name carries one.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once('.').map(|(_, ns)| ns)
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for FunctionName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_namespaces() {
        for ok in ["a", "resize-image", "A_b-9", "fn.openfaas-fn", "x.y"] {
            assert!(FunctionName::parse(ok).is_ok(), "{ok}");
        }
        let n = FunctionName::parse("fn.ns").unwrap();
        assert_eq!((n.base(), n.namespace()), ("fn", Some("ns")));
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(FunctionName::parse(""), Err(NameError::Empty));
        for bad in ["a.b.c", ".a", "a.", "a b", "a/b", "a*", "a>", "ä", "a..b"] {
            assert_eq!(
                FunctionName::parse(bad),
                Err(NameError::BadCharacter),
                "{bad}"
            );
        }
        assert_eq!(
            FunctionName::parse(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong)
        );
    }
}
