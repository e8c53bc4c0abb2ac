//! Event normalization, signature checks and PostgreSQL COPY encoding for analytics.
//!
//! The core is plain Rust (tested by `cargo test` without Python); the `python` feature adds
//! the `analytics._normalize` bindings in [`python`]. The rules are in this crate's README.

pub mod body;
pub mod columns;
pub mod compat;
pub mod copy;
pub mod error;
pub mod event;
pub mod hll;
pub mod hll_group;
pub mod json;
pub mod limits;
pub mod rebuild;
pub mod signature;
pub mod time;

#[cfg(feature = "python")]
mod python;

pub use error::{BodyError, ErrorCode, Rejection};
pub use limits::Limits;
use sha2::{Digest, Sha256};

/// The result of one request body.
#[derive(Debug, Default)]
pub struct Normalized {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
    pub copy_data: Vec<u8>,
    pub total: usize,
}

/// Decodes, frames, validates and encodes a whole body (the README, top to bottom).
pub fn normalize_batch(
    body: &[u8],
    received_at_us: i64,
    customer_id: &str,
    content_encoding: Option<&str>,
    ndjson: bool,
    limits: &Limits,
) -> Result<Normalized, BodyError> {
    normalize_receipt(
        body,
        received_at_us,
        customer_id,
        content_encoding,
        ndjson,
        limits,
        None,
    )
}

/// [`normalize_batch`] of a body whose signature made at `signed_at` (unix seconds) was
/// verified, or of an unsigned one (`None`): see [`event::Receipt`].
pub fn normalize_receipt(
    body: &[u8],
    received_at_us: i64,
    customer_id: &str,
    content_encoding: Option<&str>,
    ndjson: bool,
    limits: &Limits,
    signed_at: Option<i64>,
) -> Result<Normalized, BodyError> {
    let receipt = match signed_at {
        None => event::Receipt::Received,
        Some(t) => event::Receipt::Signed {
            t,
            body_sha256: Sha256::digest(body).into(),
        },
    };
    let decoded = body::decode(body, content_encoding, limits)?;
    let framed = body::frame(&decoded, ndjson, limits)?;
    let ctx = event::Context {
        limits,
        customer_id,
        received_at_us,
        sent_at_us: framed.sent_at_us,
        receipt,
    };
    let mut out = Normalized {
        total: framed.events.len(),
        copy_data: Vec::with_capacity(decoded.len() + framed.events.len() * 128),
        ..Normalized::default()
    };
    let mut scratch = event::Scratch::default();
    for (index, f) in framed.events.iter().enumerate() {
        // The size cap comes first, so an oversized line is never parsed for its verdict.
        let result = if f.raw_len > limits.max_event_bytes {
            Err((
                ErrorCode::EventTooLarge,
                format!(
                    "event is {} bytes, over {}",
                    f.raw_len, limits.max_event_bytes
                ),
            ))
        } else {
            match &f.event {
                Ok(j) => event::encode(j, index, &ctx, &mut scratch, &mut out.copy_data),
                Err(e) => Err((
                    ErrorCode::InvalidJson,
                    format!("event is not valid JSON: {e}"),
                )),
            }
        };
        match result {
            Ok(()) => out.accepted += 1,
            Err((code, message)) => out.rejected.push(Rejection {
                index,
                code,
                message,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dedup keys of a body's rows (the second field of each COPY tuple).
    fn keys(out: &Normalized) -> Vec<String> {
        match columns::decode(&out.copy_data).unwrap().remove(1) {
            columns::Column::Text(keys) => {
                keys.into_iter().map(|k| k.unwrap().to_owned()).collect()
            }
            other => panic!("dedup_key is text, got {other:?}"),
        }
    }

    #[test]
    fn a_replayed_signed_body_has_the_same_dedup_keys() {
        let body =
            br#"{"events": [{"name": "a"}, {"name": "a"}, {"name": "b", "ts": 1700000000000}]}"#;
        let limits = Limits::default();
        let run = |received: i64, signed_at: Option<i64>, body: &[u8]| {
            keys(&normalize_receipt(body, received, "1", None, false, &limits, signed_at).unwrap())
        };
        let now = 1_700_000_000_000_000;
        // Unsigned: no id and no ts, so each receipt is new.
        assert_ne!(run(now, None, body)[0], run(now + 1, None, body)[0]);
        // Signed: the same signed request received again is the same receipt...
        let first = run(now, Some(1_700_000_000), body);
        assert_eq!(first, run(now + 5_000_000, Some(1_700_000_000), body));
        // ...and events within it stay apart, as do other signing times and other bodies.
        assert_ne!(first[0], first[1]);
        assert_ne!(first[0], run(now, Some(1_700_000_001), body)[0]);
        let other = br#"{"events": [{"name": "a"}, {"name": "a"}, {"name": "c"}]}"#;
        assert_ne!(first[0], run(now, Some(1_700_000_000), other)[0]);
        // An event with its own ts keeps its content fingerprint either way.
        assert_eq!(first[2], run(now, None, body)[2]);
    }
}
