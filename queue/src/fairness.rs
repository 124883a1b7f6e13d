//! A call's fairness key within its function (`X-Fairness-Key`): calls of one function and
//! priority start round-robin across the keys with calls waiting, so one key's backlog delays
//! another key's call by about one round. A waiting keyed call is parked under its key's own
//! subject of the shard's wait stream (`subjects::park_subject`), and workers claim the oldest
//! call of each key in turn into the function's lane (see the worker's `pull/claim.rs`).
//!
//! Invariant: a call without a key carries nothing (no header, no record field), so it is stored
//! and read exactly as before keys existed.

use async_nats::HeaderMap;

use crate::headers;

/// The longest key, in bytes.
pub const MAX_LEN: usize = 64;

/// What a key may be, as a refusal says it.
pub const ALLOWED: &str = "must be 1 to 64 printable ASCII characters, with no space at either end";

/// A key that is empty, too long, or holds a byte outside printable ASCII; the gateway answers
/// 400 with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{ALLOWED}")]
pub struct FairnessKeyError;

/// A valid fairness key: 1 to 64 bytes, each printable ASCII (space to `~`), not starting or
/// ending with a space (NATS trims header values, so such a key would not arrive as sent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FairnessKey(String);

/// The subject token of the calls of a keyed function that carry no key: they take their turn
/// as one more key. No key's token is `-` (a key's token is hex).
pub const NO_KEY_TOKEN: &str = "-";

impl FairnessKey {
    pub fn parse(raw: &str) -> Result<Self, FairnessKeyError> {
        let printable = raw.bytes().all(|b| (0x20..=0x7e).contains(&b));
        let trimmed = !raw.starts_with(' ') && !raw.ends_with(' ');
        if raw.is_empty() || raw.len() > MAX_LEN || !printable || !trimmed {
            return Err(FairnessKeyError);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as one subject token: lower-case hex of its bytes, so spaces, dots and wildcards
    /// in a key never reach a subject, and two keys never share a token.
    pub fn token(&self) -> String {
        use std::fmt::Write;
        self.0
            .bytes()
            .fold(String::with_capacity(self.0.len() * 2), |mut t, b| {
                let _ = write!(t, "{b:02x}");
                t
            })
    }

    /// The key a subject token names, or `None` when the token is not one [`FairnessKey::token`]
    /// makes.
    pub fn of_token(token: &str) -> Option<Self> {
        if !token.len().is_multiple_of(2) {
            return None;
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let key = String::from_utf8(bytes).ok()?;
        let parsed = Self::parse(&key).ok()?;
        (parsed.token() == token).then_some(parsed)
    }

    /// The key a stored call carries in `Flotilla-Fairness-Key`; `None` without one (every call
    /// stored before keys existed) or with one this release would refuse.
    pub fn of_headers(headers: Option<&HeaderMap>) -> Option<Self> {
        headers
            .and_then(|h| h.get(headers::FLOTILLA_FAIRNESS_KEY))
            .and_then(|v| Self::parse(v.as_str()).ok())
    }

    /// Sets `Flotilla-Fairness-Key` on a call's headers.
    pub fn mark(&self, headers: &mut HeaderMap) {
        headers.insert(headers::FLOTILLA_FAIRNESS_KEY, self.as_str());
    }
}

/// The token a call of `key` is parked under.
pub fn token_of(key: Option<&FairnessKey>) -> String {
    key.map_or_else(|| NO_KEY_TOKEN.to_owned(), FairnessKey::token)
}

impl std::fmt::Display for FairnessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_one_to_sixty_four_printable_bytes_and_nothing_else() {
        for good in ["a", "tenant 42", "a.b*c>d", "~", &"x".repeat(64)] {
            assert_eq!(FairnessKey::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            &"x".repeat(65),
            "tab\there",
            "new\nline",
            "é",
            "\u{7f}",
            " a",
            "a ",
            " ",
        ] {
            assert_eq!(FairnessKey::parse(bad), Err(FairnessKeyError), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_subject_safe_and_round_trip() {
        for raw in ["tenant 42", "a.b*c>d", "a b", &"~".repeat(64)] {
            let k = FairnessKey::parse(raw).unwrap();
            let t = k.token();
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{t}"
            );
            assert_eq!(FairnessKey::of_token(&t), Some(k));
        }
        for bad in ["", "-", "4", "zz", "0a", "4G", "C3A9"] {
            assert_eq!(FairnessKey::of_token(bad), None, "{bad:?}");
        }
        assert_eq!(token_of(None), NO_KEY_TOKEN);
    }

    #[test]
    fn travels_in_its_own_header() {
        let mut h = HeaderMap::new();
        assert_eq!(FairnessKey::of_headers(Some(&h)), None);
        let k = FairnessKey::parse("acme").unwrap();
        k.mark(&mut h);
        assert_eq!(FairnessKey::of_headers(Some(&h)), Some(k));
        assert_eq!(FairnessKey::of_headers(None), None);
    }
}
