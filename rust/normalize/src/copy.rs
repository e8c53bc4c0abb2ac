//! PostgreSQL binary COPY tuple encoding (no file header or trailer, so payloads concatenate).
//!
//! Each tuple is an i16 field count followed by, per field, an i32 byte length (-1 for NULL)
//! and the value bytes, all big-endian. A row's columns, their order and their PostgreSQL
//! types are declared once with [`copy_row!`].

use crate::time::PG_EPOCH_OFFSET_US;

/// Declares a COPY row: `column: RustType = "postgres type" => encoder,` per field, in order.
///
/// Generates `struct Row` with one field per column, `COPY_SCHEMA` (every `(column, type)`
/// in order, which Python creates its staging table from) and `Row::write`, which appends
/// the fields as one tuple in that same order: the order is written nowhere else.
macro_rules! copy_row {
    ($( $(#[$doc:meta])* $column:ident : $ty:ty = $pg_type:literal => $encode:path, )*) => {
        /// The values of one COPY tuple, one field per column.
        struct Row<'r> {
            $( $(#[$doc])* $column: $ty, )*
        }

        /// `(column, PostgreSQL type)` of every field of a COPY tuple, in the order written.
        pub const COPY_SCHEMA: &[(&str, &str)] = &[$( (stringify!($column), $pg_type), )*];

        impl Row<'_> {
            /// Appends the row as one binary COPY tuple.
            fn write(&self, out: &mut Vec<u8>) {
                $crate::copy::tuple(out, COPY_SCHEMA.len() as i16);
                $( $encode(out, self.$column); )*
            }
        }
    };
}
pub(crate) use copy_row;

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

pub fn int8(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn int2(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&2i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

/// A jsonb field: the version byte, then the JSON text `write` appends.
pub fn jsonb(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = begin_field(out);
    out.push(JSONB_VERSION);
    write(out);
    end_field(out, start);
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
