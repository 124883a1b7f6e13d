//! A call's priority within its function (`X-Priority: high | normal | low`): which of the
//! function's waiting calls starts first. Calls wait by priority in lanes, one subject each in the
//! shard's wait stream (`subjects::wait_lane_subject`); a worker gives each free slot to the
//! highest lane with calls waiting. Across functions nothing changes: isolation already applies.
//!
//! Invariant: `normal` is never written anywhere (no header, no record field, the wait subject of
//! before), so calls that do not ask for a priority cost nothing and read as they always did.

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::headers;

/// A call's priority; `Normal` unless the client asked for another.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// What a priority may be, as a refusal says it.
pub const ALLOWED: &str = "must be one of high, normal or low";

/// A priority that is none of the three; the gateway answers 400 with this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{ALLOWED}")]
pub struct PriorityError;

impl Priority {
    /// Every priority, in the order waiting calls are served: highest first.
    pub const ALL: [Priority; 3] = [Self::High, Self::Normal, Self::Low];

    /// `high`, `normal` or `low`, in any letter case.
    pub fn parse(raw: &str) -> Result<Self, PriorityError> {
        Self::ALL
            .into_iter()
            .find(|p| raw.eq_ignore_ascii_case(p.as_str()))
            .ok_or(PriorityError)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    pub fn is_normal(&self) -> bool {
        *self == Self::Normal
    }

    /// The position in [`Priority::ALL`]: 0 is served first.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The priority a stored call carries in `Flotilla-Priority`; a call without it (every call
    /// stored before priorities existed) or with a value this release does not know is normal.
    pub fn of_headers(headers: Option<&HeaderMap>) -> Self {
        headers
            .and_then(|h| h.get(headers::FLOTILLA_PRIORITY))
            .and_then(|v| Self::parse(v.as_str()).ok())
            .unwrap_or_default()
    }

    /// Sets `Flotilla-Priority` on a call's headers, or leaves them as they are for `normal`.
    pub fn mark(self, headers: &mut HeaderMap) {
        if !self.is_normal() {
            headers.insert(headers::FLOTILLA_PRIORITY, self.as_str());
        }
    }

    /// The wait-subject token of a lane other than normal's. `~` cannot occur in a function name,
    /// so a lane never shares a subject with a function's own.
    pub(crate) fn lane_token(self) -> Option<&'static str> {
        match self {
            Self::High => Some("~high"),
            Self::Normal => None,
            Self::Low => Some("~low"),
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_names_in_any_case_and_nothing_else() {
        assert_eq!(Priority::parse("high"), Ok(Priority::High));
        assert_eq!(Priority::parse("LOW"), Ok(Priority::Low));
        assert_eq!(Priority::parse("Normal"), Ok(Priority::Normal));
        for bad in ["", "urgent", "high ", "1"] {
            assert_eq!(Priority::parse(bad), Err(PriorityError), "{bad:?}");
        }
        assert!(Priority::High < Priority::Normal && Priority::Normal < Priority::Low);
        assert_eq!(Priority::ALL.map(Priority::index), [0, 1, 2]);
    }

    #[test]
    fn only_a_priority_other_than_normal_is_written() {
        let mut h = HeaderMap::new();
        Priority::Normal.mark(&mut h);
        assert!(h.get(headers::FLOTILLA_PRIORITY).is_none());
        assert_eq!(Priority::of_headers(Some(&h)), Priority::Normal);
        Priority::Low.mark(&mut h);
        assert_eq!(Priority::of_headers(Some(&h)), Priority::Low);
        assert_eq!(Priority::of_headers(None), Priority::Normal);
        let mut unknown = HeaderMap::new();
        unknown.insert(headers::FLOTILLA_PRIORITY, "urgent");
        assert_eq!(Priority::of_headers(Some(&unknown)), Priority::Normal);
    }
}
