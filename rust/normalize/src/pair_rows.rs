//! A rebuild's pair rollup rows, aggregated here and handed to PostgreSQL as COPY tuples.
//!
//! A rebuild (store/deferred.py) of a bare hour, one no rollup row exists for yet, writes
//! every pair row of the hour anew. In SQL each event was spread over its ten pairs, hashed
//! into groups, sorted into key order and inserted: ~11 µs of PostgreSQL CPU a pair row,
//! 3.3 rows an event for a 30-day backfill of 1M events, most of a rebuild's cost. Here the
//! rebuild's SQL sends its events grouped per minute and combination of values, once each,
//! as JSON (`[customer, name, hour, events, sum, [dimension values]]`); this module sums
//! them per pair of values and hour, sorts them in the table's key order and encodes them as
//! binary COPY tuples of `rollup_pair_hour`, which PostgreSQL only has to insert.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::copy;
use crate::hll::HllError;

/// One group of events as the rebuild's SQL sends it: customer id, event name, the hour
/// (Unix seconds), how many events, the sum of their values, and the value of each
/// dimension (in the order given) or null.
type Row = (i64, String, i64, i64, f64, Vec<Option<String>>);

/// The columns of each tuple, in order (the table's key, then `count` and `sum_value`).
pub const PAIR_COLUMNS: &[&str] = &[
    "customer_id",
    "name",
    "dim_a",
    "dim_b",
    "value_a",
    "value_b",
    "bucket",
    "count",
    "sum_value",
];

/// A pair row's key: customer, name, the two dimensions (indexes into the sorted dims,
/// a < b), their values, and the hour.
type Key<'r> = (i64, &'r str, usize, usize, &'r str, &'r str, i64);

/// The pair rows of `rows_json` (see `Row`) for `dims` (sorted: every pair a < b is one
/// `rollup_pair_hour` kind, `dim_a < dim_b`), as binary COPY tuples in key order (bytes,
/// as the "C" collation compares), and how many rows. A pair row needs both values.
pub fn pair_copy(rows_json: &str, dims: &[String]) -> Result<(Vec<u8>, usize), HllError> {
    if dims.windows(2).any(|w| w[0] >= w[1]) {
        return Err(HllError(
            "pair rows: dimensions must be sorted and distinct".into(),
        ));
    }
    let rows: Vec<Row> =
        serde_json::from_str(rows_json).map_err(|e| HllError(format!("pair rows: {e}")))?;
    let mut sums: HashMap<Key<'_>, (i64, f64), Xxh3DefaultBuilder> = HashMap::default();
    for (customer, name, hour, n, s, values) in &rows {
        if values.len() != dims.len() {
            return Err(HllError(format!(
                "pair rows: {} dimension values for {} dimensions",
                values.len(),
                dims.len()
            )));
        }
        for (a, va) in values.iter().enumerate() {
            let Some(va) = va else { continue };
            for (b, vb) in values.iter().enumerate().skip(a + 1) {
                let Some(vb) = vb else { continue };
                let sum = sums
                    .entry((*customer, name, a, b, va, vb, *hour))
                    .or_insert((0, 0.0));
                sum.0 += n;
                sum.1 += s;
            }
        }
    }
    let mut keys: Vec<_> = sums.into_iter().collect();
    // Key order: dims are sorted, so the indexes order as the names do; text as bytes.
    keys.sort_unstable_by(|(x, _), (y, _)| {
        (
            x.0,
            x.1.as_bytes(),
            x.2,
            x.3,
            x.4.as_bytes(),
            x.5.as_bytes(),
            x.6,
        )
            .cmp(&(
                y.0,
                y.1.as_bytes(),
                y.2,
                y.3,
                y.4.as_bytes(),
                y.5.as_bytes(),
                y.6,
            ))
    });
    let mut out = Vec::with_capacity(keys.len() * 96);
    for ((customer, name, a, b, va, vb, hour), (n, s)) in &keys {
        copy::tuple(&mut out, PAIR_COLUMNS.len() as i16);
        copy::int8(&mut out, *customer);
        copy::text(&mut out, name);
        copy::text(&mut out, &dims[*a]);
        copy::text(&mut out, &dims[*b]);
        copy::text(&mut out, va);
        copy::text(&mut out, vb);
        copy::timestamptz(&mut out, hour * 1_000_000);
        copy::int8(&mut out, *n);
        copy::opt_float8(&mut out, Some(*s));
    }
    Ok((out, keys.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Vec<String> {
        vec!["country".into(), "path".into(), "utm".into()]
    }

    /// A tuple back: customer, name, dim_a, dim_b, value_a, value_b, bucket (µs since
    /// 2000), count, sum.
    type Tuple = (i64, String, String, String, String, String, i64, i64, f64);

    fn decode(mut b: &[u8]) -> Vec<Tuple> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
            let (x, rest) = b.split_at(n);
            *b = rest;
            x
        }
        fn field<'a>(b: &mut &'a [u8]) -> &'a [u8] {
            let len = i32::from_be_bytes(take(b, 4).try_into().unwrap()) as usize;
            take(b, len)
        }
        let text = |x: &[u8]| String::from_utf8(x.to_vec()).unwrap();
        let int = |x: &[u8]| i64::from_be_bytes(x.try_into().unwrap());
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(i16::from_be_bytes(take(&mut b, 2).try_into().unwrap()), 9);
            out.push((
                int(field(&mut b)),
                text(field(&mut b)),
                text(field(&mut b)),
                text(field(&mut b)),
                text(field(&mut b)),
                text(field(&mut b)),
                int(field(&mut b)),
                int(field(&mut b)),
                f64::from_be_bytes(field(&mut b).try_into().unwrap()),
            ));
        }
        out
    }

    #[test]
    fn every_pair_of_values_summed_per_hour_in_key_order() {
        let rows = r#"[[7, "view", 3600, 2, 1.5, ["DE", "/b", null]],
                       [7, "view", 3600, 1, 0, ["DE", "/a", "g"]],
                       [7, "view", 7200, 3, 2, ["DE", "/b", null]],
                       [7, "view", 3600, 4, 1, ["DE", "/b", "g"]],
                       [5, "a\"b", 0, 1, 0, [null, "/\u00e9", "x"]]]"#;
        let (data, n) = pair_copy(rows, &dims()).unwrap();
        let got = decode(&data);
        assert_eq!(n, got.len());
        let h = |s: i64| s * 1_000_000 - crate::time::PG_EPOCH_OFFSET_US;
        let row = |c, nm: &str, a: &str, b: &str, va: &str, vb: &str, hr, k, s| {
            (
                c,
                nm.into(),
                a.into(),
                b.into(),
                va.into(),
                vb.into(),
                h(hr),
                k,
                s,
            )
        };
        let want = vec![
            row(5, "a\"b", "path", "utm", "/\u{e9}", "x", 0, 1, 0.0),
            row(7, "view", "country", "path", "DE", "/a", 3600, 1, 0.0),
            row(7, "view", "country", "path", "DE", "/b", 3600, 6, 2.5),
            row(7, "view", "country", "path", "DE", "/b", 7200, 3, 2.0),
            row(7, "view", "country", "utm", "DE", "g", 3600, 5, 1.0),
            row(7, "view", "path", "utm", "/a", "g", 3600, 1, 0.0),
            row(7, "view", "path", "utm", "/b", "g", 3600, 4, 1.0),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn bad_rows() {
        assert!(pair_copy("[[1, \"a\", 0, 1, 0, [\"x\"]]]", &dims()).is_err());
        assert!(pair_copy("not json", &dims()).is_err());
        assert!(pair_copy("[]", &["b".into(), "a".into()]).is_err());
        assert_eq!(pair_copy("[]", &dims()).unwrap().1, 0);
    }
}
