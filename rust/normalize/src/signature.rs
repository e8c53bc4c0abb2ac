//! `X-Signature` checks: HMAC-SHA256 over `"<t>." + body`, several `v1` for key rotation,
//! several secrets for the server's side of a rotation, constant-time comparison, and a
//! replay window on both sides of now.

use crate::error::ErrorCode;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const MAX_HEADER_BYTES: usize = 4096;
pub const MAX_SIGNATURES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Malformed(&'static str),
    /// `t` lies more than `tolerance_s` before the server's clock `now_s`.
    Stale {
        t: i64,
        now_s: i64,
        tolerance_s: i64,
    },
    /// `t` lies more than `tolerance_s` after the server's clock `now_s`.
    Future {
        t: i64,
        now_s: i64,
        tolerance_s: i64,
    },
    Mismatch,
}

impl SignatureError {
    pub fn code(self) -> ErrorCode {
        match self {
            SignatureError::Malformed(_) => ErrorCode::MalformedSignature,
            SignatureError::Stale { .. } => ErrorCode::StaleSignature,
            SignatureError::Future { .. } => ErrorCode::FutureSignature,
            SignatureError::Mismatch => ErrorCode::BadSignature,
        }
    }

    /// What went wrong and what to do; for a timestamp out of the window, the window and
    /// the server's clock, so a producer can tell a replay from a skewed clock.
    pub fn message(self) -> String {
        match self {
            SignatureError::Malformed(why) => why.to_string(),
            SignatureError::Stale {
                t,
                now_s,
                tolerance_s,
            } => format!(
                "signature timestamp t={t} is {} s older than the server's clock \
                 (unix {now_s}); signatures are accepted within {tolerance_s} s of it: \
                 sign each request when sending it, with a synchronized clock",
                now_s.saturating_sub(t)
            ),
            SignatureError::Future {
                t,
                now_s,
                tolerance_s,
            } => format!(
                "signature timestamp t={t} is {} s ahead of the server's clock \
                 (unix {now_s}); signatures are accepted within {tolerance_s} s of it: \
                 t is unix seconds (not milliseconds), from a synchronized clock",
                t.saturating_sub(now_s)
            ),
            SignatureError::Mismatch => "signature does not match the body: v1 is the hex \
                HMAC-SHA256 of \"<t>.<body>\" keyed with the signing secret as printed \
                (its UTF-8 bytes)"
                .to_string(),
        }
    }
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Parses `t=<secs>,v1=<hex>[,v1=<hex>…]` into the timestamp and the candidate MACs.
/// Returns `t` both as sent (the signed text) and as a number.
pub fn parse_header(header: &str) -> Result<(&str, i64, Vec<[u8; 32]>), SignatureError> {
    use SignatureError::Malformed;
    if header.len() > MAX_HEADER_BYTES {
        return Err(Malformed("signature header is too long"));
    }
    let mut t = None;
    let mut macs = Vec::new();
    for item in header.split(',') {
        let item = item.trim_matches(' ');
        let (scheme, value) = item.split_once('=').unwrap_or((item, ""));
        match scheme {
            "t" => {
                if t.is_some() {
                    return Err(Malformed("signature header has two timestamps"));
                }
                if value.is_empty()
                    || value.len() > 12
                    || !value.bytes().all(|c| c.is_ascii_digit())
                {
                    return Err(Malformed("signature timestamp must be unix seconds"));
                }
                t = value.parse::<i64>().ok().map(|n| (value, n));
            }
            "v1" => {
                if macs.len() == MAX_SIGNATURES {
                    return Err(Malformed("signature header has too many v1 entries"));
                }
                macs.push(unhex(value).ok_or(Malformed("v1 must be 64 hex digits"))?);
            }
            _ => {}
        }
    }
    let t = t.ok_or(Malformed("signature header has no timestamp"))?;
    if macs.is_empty() {
        return Err(Malformed("signature header has no v1 signature"));
    }
    Ok((t.0, t.1, macs))
}

pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    verify_at(secret, header, body, now_s, tolerance_s).map(|_| ())
}

/// [`verify`], returning the signing time `t` (unix seconds) of a valid signature.
pub fn verify_at(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<i64, SignatureError> {
    verify_any(&[secret], header, body, now_s, tolerance_s)
}

/// [`verify_at`] with several secrets (a key whose signing secret is being rotated): valid
/// when any `v1` is the MAC of any secret.
pub fn verify_any(
    secrets: &[&[u8]],
    header: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<i64, SignatureError> {
    let (t_text, t, macs) = parse_header(header)?;
    if now_s.saturating_sub(t) > tolerance_s {
        return Err(SignatureError::Stale {
            t,
            now_s,
            tolerance_s,
        });
    }
    if t.saturating_sub(now_s) > tolerance_s {
        return Err(SignatureError::Future {
            t,
            now_s,
            tolerance_s,
        });
    }
    // Every candidate is checked against every secret (no early exit), each with hmac's
    // constant-time comparison.
    let mut matched = false;
    for secret in secrets {
        let mac = signed_payload_mac(secret, t_text, body);
        matched = macs.iter().fold(matched, |acc, candidate| {
            acc | mac.clone().verify_slice(candidate).is_ok()
        });
    }
    if matched {
        Ok(t)
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// HMAC-SHA256(secret) fed with `"<t>." + body`, ready to finalize or verify.
fn signed_payload_mac(secret: &[u8], t: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` signed at `t` (for clients, tests and load scripts).
pub fn sign(secret: &[u8], body: &[u8], t: i64) -> String {
    let hex: String = signed_payload_mac(secret, &t.to_string(), body)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rotation() {
        let header = sign(b"k2", b"{}", 1000);
        assert_eq!(verify(b"k2", &header, b"{}", 1000, 300), Ok(()));
        let old = sign(b"k1", b"{}", 1000);
        let both = format!("{},{}", header, old.split_once(',').unwrap().1);
        assert_eq!(verify(b"k1", &both, b"{}", 1000, 300), Ok(()));
        assert_eq!(
            verify(b"k3", &both, b"{}", 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"k2", &header, b"{ }", 1000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_secrets() {
        let header = sign(b"old", b"{}", 1000);
        assert_eq!(
            verify_any(&[b"new", b"old"], &header, b"{}", 1000, 300),
            Ok(1000)
        );
        assert_eq!(
            verify_any(&[b"new", b"other"], &header, b"{}", 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_any(&[], &header, b"{}", 1000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn window_and_malformed() {
        let header = sign(b"k", b"x", 1000);
        let stale = verify(b"k", &header, b"x", 1301, 300).unwrap_err();
        assert_eq!(stale.code(), "stale_signature");
        assert!(stale.message().contains("301 s older") && stale.message().contains("1301"));
        assert!(stale.message().contains("within 300 s"));
        let future = verify(b"k", &header, b"x", 699, 300).unwrap_err();
        assert_eq!(future.code(), "future_signature");
        assert!(future.message().contains("301 s ahead") && future.message().contains("699"));
        assert_eq!(verify(b"k", &header, b"x", 1300, 300), Ok(()));
        for bad in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,t=2,v1=00",
            &"a".repeat(5000),
        ] {
            assert_eq!(
                verify(b"k", bad, b"x", 1, 300).unwrap_err().code(),
                "malformed_signature"
            );
        }
    }
}
