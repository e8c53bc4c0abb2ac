//! PostgreSQL binary COPY tuple encoding (no file header or trailer, so payloads concatenate).
//!
//! Each tuple is an i16 field count followed by, per field, an i32 byte length (-1 for NULL)
//! and the value bytes, all big-endian.

use crate::time::PG_EPOCH_OFFSET_US;

pub const JSONB_VERSION: u8 = 1;

pub fn tuple(out: &mut Vec<u8>, fields: i16) {
    out.extend_from_slice(&fields.to_be_bytes());
}

pub fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

pub fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn opt_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => text(out, s),
        None => null(out),
    }
}

/// A timestamptz given in µs since the Unix epoch.
pub fn timestamptz(out: &mut Vec<u8>, unix_us: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&(unix_us - PG_EPOCH_OFFSET_US).to_be_bytes());
}

pub fn opt_float8(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&v.to_be_bytes());
        }
        None => null(out),
    }
}

pub fn int2(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&2i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

/// Starts a variable-length field whose length is patched by [`end_field`].
pub fn begin_field(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&0i32.to_be_bytes());
    out.len()
}

pub fn end_field(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as i32;
    out[start - 4..start].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let mut out = Vec::new();
        tuple(&mut out, 2);
        text(&mut out, "ab");
        let start = begin_field(&mut out);
        out.push(JSONB_VERSION);
        out.extend_from_slice(b"{}");
        end_field(&mut out, start);
        assert_eq!(out, b"\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x03\x01{}");
        let mut ts = Vec::new();
        timestamptz(&mut ts, PG_EPOCH_OFFSET_US + 1);
        assert_eq!(ts, b"\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x01");
    }
}
