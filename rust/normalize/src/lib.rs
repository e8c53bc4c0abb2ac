//! Event normalization, signature checks and PostgreSQL COPY encoding for analytics.
//!
//! The core is plain Rust (tested by `cargo test` without Python); the `python` feature adds
//! the `analytics._normalize` bindings in [`python`]. The rules are in this crate's README.

pub mod body;
pub mod columns;
pub mod copy;
pub mod error;
pub mod event;
pub mod json;
pub mod limits;
pub mod signature;
pub mod time;

#[cfg(feature = "python")]
mod python;

pub use error::{BodyError, ErrorCode, Rejection};
pub use limits::Limits;

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
    let decoded = body::decode(body, content_encoding, limits)?;
    let framed = body::frame(&decoded, ndjson, limits)?;
    let ctx = event::Context {
        limits,
        customer_id,
        received_at_us,
        sent_at_us: framed.sent_at_us,
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
