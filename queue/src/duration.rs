//! Durations as operators write them, in flags and in the policy file alike: Go's
//! `time.ParseDuration` syntax (`250ms`, `1m30s`, `1h2m3s`, `1.5s`, `100us`), so values from
//! OpenFaaS configurations carry over, plus a bare number of seconds (`30`), which the OpenFaaS
//! gateway also takes. One parser, so the gateway, the workers and the loadgen agree on it.

use std::time::Duration;

/// The units Go accepts, with their length in nanoseconds. `µs` is both the micro sign (U+00B5)
/// and the Greek mu (U+03BC), as in Go.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Fraction digits beyond these change nothing at nanosecond precision (the largest unit is
/// 3.6e12 ns), and stopping here keeps the arithmetic far from overflow.
const MAX_FRACTION_DIGITS: usize = 18;

/// Why a text is not a duration. Each message is one line that quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (e.g. 250ms, 30s, 1m30s)")]
    Empty,
    #[error("'{0}': a duration cannot be negative")]
    Negative(String),
    #[error("'{0}' is not a duration (e.g. 250ms, 30s, 1m30s)")]
    Malformed(String),
    #[error("'{input}': {number} has no unit (ns, us, ms, s, m or h)")]
    MissingUnit { input: String, number: String },
    #[error("'{input}': unknown unit '{unit}' (ns, us, ms, s, m or h)")]
    UnknownUnit { input: String, unit: String },
    #[error("'{0}' is out of range (at most about 584 years)")]
    OutOfRange(String),
}

/// Parses Go's duration syntax (one or more `<number><unit>` with units `ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h`; numbers may have a fraction; a leading `+` is allowed) or a bare non-negative
/// number of seconds. Negative durations are refused: nothing in the fleet waits less than zero.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let input = text.trim();
    let body = input.strip_prefix('+').unwrap_or(input);
    if body.is_empty() {
        return Err(DurationError::Empty);
    }
    if body.starts_with('-') {
        return Err(DurationError::Negative(input.to_owned()));
    }
    let malformed = || DurationError::Malformed(input.to_owned());
    let out_of_range = || DurationError::OutOfRange(input.to_owned());

    let mut rest = body;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        if number.is_empty() || number == "." {
            return Err(malformed());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos = if unit.is_empty() {
            // Only a whole text that is one plain number is seconds: `1m30` lacks a unit.
            if rest.len() != body.len() || !after.is_empty() {
                return Err(DurationError::MissingUnit {
                    input: input.to_owned(),
                    number: number.to_owned(),
                });
            }
            NANOS_PER_SECOND
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|&(_, n)| n)
                .ok_or_else(|| DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                })?
        };
        let part = scale(number, unit_nanos).ok_or_else(out_of_range)?;
        nanos = nanos.checked_add(part).ok_or_else(out_of_range)?;
        rest = after;
    }
    let nanos = u64::try_from(nanos).map_err(|_| out_of_range())?;
    Ok(Duration::from_nanos(nanos))
}

/// Splits off the leading `[0-9]*(\.[0-9]*)?`.
fn split_number(s: &str) -> (&str, &str) {
    let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let Some(after_dot) = s[int_len..].strip_prefix('.') else {
        return s.split_at(int_len);
    };
    let frac_len = after_dot
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after_dot.len());
    s.split_at(int_len + 1 + frac_len)
}

/// `number` (digits, optionally with a fraction) times `unit_nanos`, truncated to whole
/// nanoseconds as Go does; `None` on overflow.
fn scale(number: &str, unit_nanos: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let mut whole: u128 = 0;
    for d in int.bytes() {
        whole = whole.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
    }
    let frac = &frac[..frac.len().min(MAX_FRACTION_DIGITS)];
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for d in frac.bytes() {
        numerator = numerator * 10 + u128::from(d - b'0');
        denominator *= 10;
    }
    whole
        .checked_mul(unit_nanos)?
        .checked_add(numerator * unit_nanos / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn single_units() {
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("100us"), Duration::from_micros(100));
        assert_eq!(ok("100\u{b5}s"), Duration::from_micros(100));
        assert_eq!(ok("100\u{3bc}s"), Duration::from_micros(100));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
    }

    #[test]
    fn compound_values_as_go_writes_them() {
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h2m3s"), Duration::from_secs(3723));
        assert_eq!(ok("14m55s"), Duration::from_secs(895));
        assert_eq!(ok("2h45m"), Duration::from_secs(9900));
        assert_eq!(ok("1s500ms"), Duration::from_millis(1500));
        // Go allows a unit twice and in any order; so do we.
        assert_eq!(ok("1s1s"), Duration::from_secs(2));
        assert_eq!(ok("+1m30s"), Duration::from_secs(90));
    }

    #[test]
    fn fractions_are_exact_to_the_nanosecond() {
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("5.s"), Duration::from_secs(5));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("1.0000000019s"), Duration::from_nanos(1_000_000_001));
        assert_eq!(ok("1.25h"), Duration::from_secs(4500));
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("2"), Duration::from_secs(2));
        assert_eq!(ok("1.5"), Duration::from_millis(1500));
        assert_eq!(ok(" 30s "), Duration::from_secs(30));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
        assert_eq!(parse_duration("+"), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
        for malformed in ["x", ".", ".s", "s", "ms5"] {
            assert!(
                matches!(parse_duration(malformed), Err(DurationError::Malformed(_))),
                "{malformed}: {:?}",
                parse_duration(malformed)
            );
        }
        assert_eq!(
            parse_duration("1m30"),
            Err(DurationError::MissingUnit {
                input: "1m30".into(),
                number: "30".into()
            })
        );
        assert!(matches!(
            parse_duration("1.2.3s"),
            Err(DurationError::MissingUnit { .. })
        ));
        let e = parse_duration("3 days").unwrap_err();
        assert!(
            matches!(&e, DurationError::UnknownUnit { unit, .. } if unit == " days"),
            "{e:?}"
        );
        assert!(matches!(
            parse_duration("1d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("6000000h"),
            Err(DurationError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999999s"),
            Err(DurationError::OutOfRange(_))
        ));
    }

    #[test]
    fn messages_are_one_line_and_quote_the_input() {
        for bad in ["", "-1s", "x", "1m30", "3 days", "6000000h"] {
            let message = parse_duration(bad).unwrap_err().to_string();
            assert_eq!(message.lines().count(), 1, "{message}");
            assert!(message.contains(bad.trim()), "{message}");
        }
    }
}
