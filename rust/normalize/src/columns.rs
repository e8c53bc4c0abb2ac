//! COPY tuples turned back into one value list per column, for the writer's small commits.
//!
//! A commit of a few rows costs PostgreSQL less as one statement over `unnest` of column
//! arrays than as a COPY into a temporary staging table (no staging table to fill and to
//! truncate at commit, one round trip instead of four); the writer takes that path below a
//! row count and COPY above it. The tuples are the ones this crate encoded (`COPY_SCHEMA`),
//! so decoding them is exact; a malformed buffer is an error, never a guess.

use crate::event::COPY_SCHEMA;
use crate::time::PG_EPOCH_OFFSET_US;

/// One column's values; `None` is SQL NULL.
#[derive(Debug, PartialEq)]
pub enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    /// timestamptz as µs since the Unix epoch.
    Timestamp(Vec<i64>),
    Float(Vec<Option<f64>>),
    /// jsonb as its JSON text (the version byte dropped).
    Json(Vec<&'a str>),
    SmallInt(Vec<i16>),
}

/// The column values of concatenated COPY tuples, in `COPY_SCHEMA` order.
pub fn decode(data: &[u8]) -> Result<Vec<Column<'_>>, String> {
    let mut columns: Vec<Column> = COPY_SCHEMA
        .iter()
        .map(|(name, pg_type)| match *pg_type {
            "text" => Ok(Column::Text(Vec::new())),
            "timestamptz" => Ok(Column::Timestamp(Vec::new())),
            "double precision" => Ok(Column::Float(Vec::new())),
            "jsonb" => Ok(Column::Json(Vec::new())),
            "smallint" => Ok(Column::SmallInt(Vec::new())),
            other => Err(format!(
                "column {name} has a type this decoder lacks: {other}"
            )),
        })
        .collect::<Result<_, _>>()?;
    let mut reader = Reader { data, pos: 0 };
    while reader.pos < data.len() {
        let fields = i16::from_be_bytes(reader.take_array()?);
        if fields as usize != COPY_SCHEMA.len() {
            return Err(format!(
                "a tuple of {fields} fields at byte {}",
                reader.pos - 2
            ));
        }
        for column in columns.iter_mut() {
            let field = reader.field()?;
            match column {
                Column::Text(v) => v.push(field.map(str_of).transpose()?),
                Column::Timestamp(v) => v.push(i64_of(required(field)?)? + PG_EPOCH_OFFSET_US),
                Column::Float(v) => v.push(field.map(f64_of).transpose()?),
                Column::Json(v) => v.push(json_of(required(field)?)?),
                Column::SmallInt(v) => v.push(i16_of(required(field)?)?),
            }
        }
    }
    Ok(columns)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| format!("truncated COPY data at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    /// One field: None for NULL (length -1), else its bytes.
    fn field(&mut self) -> Result<Option<&'a [u8]>, String> {
        match i32::from_be_bytes(self.take_array()?) {
            -1 => Ok(None),
            n if n >= 0 => self.take(n as usize).map(Some),
            n => Err(format!("a field of length {n} at byte {}", self.pos - 4)),
        }
    }
}

fn required(field: Option<&[u8]>) -> Result<&[u8], String> {
    field.ok_or_else(|| "NULL in a NOT NULL column".to_owned())
}

fn str_of(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("text that is not UTF-8: {e}"))
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes
        .try_into()
        .map_err(|_| format!("a {}-byte field where {N} belong", bytes.len()))
}

fn i64_of(bytes: &[u8]) -> Result<i64, String> {
    fixed(bytes).map(i64::from_be_bytes)
}

fn i16_of(bytes: &[u8]) -> Result<i16, String> {
    fixed(bytes).map(i16::from_be_bytes)
}

fn f64_of(bytes: &[u8]) -> Result<f64, String> {
    fixed(bytes).map(f64::from_be_bytes)
}

fn json_of(bytes: &[u8]) -> Result<&str, String> {
    match bytes.split_first() {
        Some((&crate::copy::JSONB_VERSION, text)) => str_of(text),
        _ => Err("a jsonb field without its version byte".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize_batch, Limits};

    #[test]
    fn decodes_what_the_encoder_wrote() {
        let body = br#"{"events": [
            {"name": "a", "event_id": "e1", "ts": 1700000000000, "user_id": "u", "value": 2.5,
             "properties": {"path": "/x"}},
            {"name": "b", "ts": 1700000000001}
        ]}"#;
        let received = 1_700_000_000_500_000;
        let out = normalize_batch(body, received, "7", None, false, &Limits::default()).unwrap();
        let columns = decode(&out.copy_data).unwrap();
        let names: Vec<&str> = COPY_SCHEMA.iter().map(|(n, _)| *n).collect();
        let col = |name: &str| &columns[names.iter().position(|n| *n == name).unwrap()];
        assert_eq!(
            col("customer_id"),
            &Column::Text(vec![Some("7"), Some("7")])
        );
        assert_eq!(col("event_id"), &Column::Text(vec![Some("e1"), None]));
        assert_eq!(
            col("ts"),
            &Column::Timestamp(vec![1_700_000_000_000_000, 1_700_000_000_001_000])
        );
        assert_eq!(
            col("received_at"),
            &Column::Timestamp(vec![received, received])
        );
        assert_eq!(col("value"), &Column::Float(vec![Some(2.5), None]));
        assert_eq!(
            col("properties"),
            &Column::Json(vec![r#"{"path":"/x"}"#, "{}"])
        );
    }

    #[test]
    fn properties_are_in_jsonb_key_order_and_the_fingerprint_in_bytewise_order() {
        let body = br#"{"name": "a", "ts": 1700000000000,
            "properties": {"bb": 1, "a": {"z": 2, "c": 3}, "ab": 4, "b": 5}}"#;
        let out = normalize_batch(
            body,
            1_700_000_000_500_000,
            "7",
            None,
            false,
            &Limits::default(),
        )
        .unwrap();
        let columns = decode(&out.copy_data).unwrap();
        let names: Vec<&str> = COPY_SCHEMA.iter().map(|(n, _)| *n).collect();
        let col = |name: &str| &columns[names.iter().position(|n| *n == name).unwrap()];
        // Shorter keys first, one length bytewise: the order jsonb keeps an object's keys in.
        assert_eq!(
            col("properties"),
            &Column::Json(vec![r#"{"b":5,"ab":4,"bb":1,"a.c":3,"a.z":2}"#])
        );
        // The fingerprint is over the keys in bytewise order (README), as it always was: the
        // dedup key of a retried event does not depend on the order the JSON is written in.
        assert_eq!(
            col("dedup_key"),
            &Column::Text(vec![Some("fp:cf0aad684d16d7546c87fb3a6df96901")])
        );
    }

    #[test]
    fn refuses_malformed_buffers() {
        let body = br#"{"name": "a"}"#;
        let out = normalize_batch(body, 1, "7", None, false, &Limits::default()).unwrap();
        let data = out.copy_data;
        assert!(decode(&data[..data.len() - 1]).is_err());
        assert!(decode(&data[1..]).is_err());
        assert_eq!(decode(b"").unwrap().len(), COPY_SCHEMA.len());
    }
}
