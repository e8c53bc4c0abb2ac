//! Timestamps: RFC 3339 strings and epoch milliseconds to microseconds since the Unix epoch.

use crate::json::J;

/// 1970-01-01T00:00:00Z.
pub const MIN_US: i64 = 0;
/// 9999-12-31T23:59:59.999999Z.
pub const MAX_US: i64 = 253_402_300_799_999_999;
/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub fn in_range(us: i64) -> bool {
    (MIN_US..=MAX_US).contains(&us)
}

/// A ts or sent_at value: an RFC 3339 string or a number of epoch milliseconds.
pub fn from_json(v: &J) -> Option<i64> {
    let us = match v {
        J::Str(s) => parse_rfc3339(s.as_bytes())?,
        J::I64(ms) => ms.checked_mul(1000)?,
        J::U64(_) => return None,
        J::F64(ms) => {
            let us = (ms * 1000.0).floor();
            if us.is_nan() || us.abs() >= 9.0e18 {
                return None;
            }
            us as i64
        }
        _ => return None,
    };
    in_range(us).then_some(us)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
}

/// `YYYY-MM-DD(T|t| )HH:MM:SS(.F{1,9})?(Z|z|±HH:MM)`, the fraction truncated to µs.
pub fn parse_rfc3339(s: &[u8]) -> Option<i64> {
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (digits(&s[0..4])?, digits(&s[5..7])?, digits(&s[8..10])?);
    let (hour, minute, second) = (
        digits(&s[11..13])?,
        digits(&s[14..16])?,
        digits(&s[17..19])?,
    );
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return None;
        }
        let frac = &rest[1..1 + n];
        for i in 0..6 {
            micros = micros * 10 + frac.get(i).map_or(0, |c| i64::from(c - b'0'));
        }
        rest = &rest[1 + n..];
    }
    let offset_s = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339(b"2024-02-29t12:30:45.1234567+02:00"),
            Some(1_709_202_645_123_456)
        );
        assert_eq!(
            parse_rfc3339(b"2000-01-01 00:00:00z"),
            Some(PG_EPOCH_OFFSET_US)
        );
        assert_eq!(parse_rfc3339(b"2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339(b"2024-01-01T24:00:00Z"), None);
        assert_eq!(parse_rfc3339(b"2024-01-01T00:00:60Z"), None);
        assert_eq!(parse_rfc3339(b"2024-01-01T00:00:00.Z"), None);
        assert_eq!(parse_rfc3339(b"2024-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339(b"2024-01-01T00:00:00+0200"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00\u{0}Z".as_bytes()), None);
    }

    #[test]
    fn epoch_millis_and_range() {
        assert_eq!(
            from_json(&J::I64(1_700_000_000_123)),
            Some(1_700_000_000_123_000)
        );
        assert_eq!(from_json(&J::F64(1.5)), Some(1500));
        assert_eq!(from_json(&J::I64(-1)), None);
        assert_eq!(from_json(&J::F64(1e300)), None);
        assert_eq!(from_json(&J::I64(i64::MAX)), None);
        assert_eq!(from_json(&J::Bool(true)), None);
        let max = J::Str("9999-12-31T23:59:59.999999Z".into());
        assert_eq!(from_json(&max), Some(MAX_US));
        let before = J::Str("1969-12-31T23:59:59Z".into());
        assert_eq!(from_json(&before), None);
    }
}
