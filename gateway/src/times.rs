//! Times as clients write and read them: a start time in (RFC 3339 or an HTTP date), and times
//! out as RFC 3339 in UTC with nanoseconds, the one format every JSON route shows.
//! Invariant: a leaf; no hand-written date code, everything goes through `time` and `httpdate`.

use time::OffsetDateTime;
use time::format_description::well_known::{Iso8601, Rfc3339};

/// Unix nanoseconds as RFC 3339 in UTC with all nine fractional digits
/// (`2024-05-01T12:00:00.123456789Z`, which is also `time`'s default ISO 8601); `None` past 9999.
pub fn rfc3339(unix_nanos: u128) -> Option<String> {
    let nanos = i128::try_from(unix_nanos).ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Iso8601::DEFAULT)
        .ok()
}

/// An RFC 3339 time or an HTTP date as Unix nanoseconds (0 for a time before 1970); `None` when
/// it is neither.
pub fn parse(text: &str) -> Option<u128> {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => Some(u128::try_from(t.unix_timestamp_nanos()).unwrap_or(0)),
        Err(_) => httpdate::parse_http_date(text).ok().map(|at| {
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001).unwrap(),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789).unwrap(),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(4_107_542_399_000_000_000).unwrap(),
            "2100-02-28T23:59:59.000000000Z"
        );
        assert!(rfc3339(253_402_300_800_000_000_000).is_none(), "year 10000");
        assert!(rfc3339(u128::MAX).is_none());
    }

    #[test]
    fn start_times_in_either_format() {
        assert_eq!(
            parse("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse("Tue, 14 Nov 2023 22:13:20 GMT"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(parse("1969-12-31T23:59:59Z"), Some(0));
        assert_eq!(parse("tomorrow"), None);
    }
}
