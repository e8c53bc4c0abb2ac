//! A rebuild's hour-grain rollups, computed here from its events and handed to PostgreSQL as
//! COPY tuples (store/deferred.py).
//!
//! A rebuild writes every rollup row of the hours it rebuilds anew. In SQL each event was
//! spread over its 6 hour rows and 10 pair rows, hashed into groups, sorted into key order
//! and inserted: ~11 µs of PostgreSQL CPU a pair row, 3.3 pair rows an event for a 30-day
//! backfill of 1M events, most of a rebuild's cost, and the users went out again, as JSON of
//! their own, for the sketches. Now PostgreSQL sends each event once, as JSON (`[customer,
//! name, hour, value, user, [dimension values]]`), and this module sums the hour rows
//! (`rollup_hour`: the total and each dimension's value) and the pair rows
//! (`rollup_pair_hour`: every pair of values), sorts each in its table's key order (bytes, as
//! the "C" collation compares), encodes them as binary COPY tuples, and builds the sketches
//! (`hll_group`), all from one parse. PostgreSQL then only inserts.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::copy;
use crate::hll::{HllError, Sketch};
use crate::hll_group::{self, Key};

/// One folded event as the rebuild's SQL sends it: customer id, event name, its minute (Unix
/// seconds), its value (null counts 0 in the sums), its user (null: in no sketch), and the
/// value of each dimension (in the order given) or null.
type Row = (
    i64,
    String,
    i64,
    Option<f64>,
    Option<String>,
    Vec<Option<String>>,
);

/// The columns of the tuples of `rollup_hour` and of `rollup_pair_hour`, in order.
pub const HOUR_COLUMNS: &[&str] = &[
    "customer_id",
    "name",
    "dim",
    "dim_value",
    "bucket",
    "count",
    "sum_value",
];
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

/// What a rebuild writes: COPY tuples (no header or trailer) of its minute, hour and pair
/// rows, how many of each, and its sketches in key order.
pub struct Rollups {
    pub minutes: Vec<u8>,
    pub minute_rows: usize,
    pub hours: Vec<u8>,
    pub hour_rows: usize,
    pub pairs: Vec<u8>,
    pub pair_rows: usize,
    pub sketches: Vec<(Key, Sketch)>,
}

/// A count and a sum of values.
type Sums = (i64, f64);

/// Single rows by key: customer, name, dimension ('' for the total), value, bucket.
type Singles<'r> = HashMap<(i64, &'r str, &'r str, &'r str, i64), Sums, Xxh3DefaultBuilder>;

/// A pair row's key: customer, name, the two dimensions (indexes into the sorted dims,
/// a < b), their values, and the hour.
type PairKey<'r> = (i64, &'r str, usize, usize, &'r str, &'r str, i64);

/// The rollups of `rows_json` (see `Row`) for `dims` (sorted and distinct: each pair a < b is
/// one pair kind, `dim_a < dim_b`), sketches at precision `p`; minute rows only for the
/// minutes from `minute_since` (Unix seconds) on, as the fold writes them (the horizon).
pub fn rebuild_rows(
    rows_json: &str,
    dims: &[String],
    p: u8,
    minute_since: i64,
) -> Result<Rollups, HllError> {
    if dims.windows(2).any(|w| w[0] >= w[1]) {
        return Err(HllError(
            "rebuild rows: dimensions must be sorted and distinct".into(),
        ));
    }
    let rows: Vec<Row> =
        serde_json::from_str(rows_json).map_err(|e| HllError(format!("rebuild rows: {e}")))?;
    let mut minutes: Singles<'_> = HashMap::default();
    let mut singles: Singles<'_> = HashMap::default();
    let mut pairs: HashMap<PairKey<'_>, Sums, Xxh3DefaultBuilder> = HashMap::default();
    let mut users = Vec::with_capacity(rows.len());
    for (customer, name, minute, value, user, values) in &rows {
        if values.len() != dims.len() {
            return Err(HllError(format!(
                "rebuild rows: {} dimension values for {} dimensions",
                values.len(),
                dims.len()
            )));
        }
        let (minute, hour) = (*minute, minute - minute.rem_euclid(3600));
        let v = value.unwrap_or(0.0);
        let add = |sums: &mut Sums| {
            sums.0 += 1;
            sums.1 += v;
        };
        let each = dims
            .iter()
            .zip(values)
            .filter_map(|(d, v)| v.as_deref().map(|v| (d.as_str(), v)));
        for (dim, value) in std::iter::once(("", "")).chain(each) {
            add(singles
                .entry((*customer, name, dim, value, hour))
                .or_default());
            if minute >= minute_since {
                add(minutes
                    .entry((*customer, name, dim, value, minute))
                    .or_default());
            }
        }
        for (a, va) in values.iter().enumerate() {
            let Some(va) = va else { continue };
            for (b, vb) in values.iter().enumerate().skip(a + 1) {
                let Some(vb) = vb else { continue };
                add(pairs
                    .entry((*customer, name, a, b, va, vb, hour))
                    .or_default());
            }
        }
        if let Some(user) = user {
            users.push((
                *customer,
                name.as_str(),
                hour,
                user.as_str(),
                values.as_slice(),
            ));
        }
    }
    let (minutes, minute_rows) = single_tuples(minutes);
    let (hours, hour_rows) = single_tuples(singles);
    // Dims are sorted, so the indexes order as the names do.
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_unstable_by_key(|(k, _)| *k);
    let mut out = Vec::with_capacity(pairs.len() * 96);
    for ((customer, name, a, b, va, vb, hour), sums) in &pairs {
        copy::tuple(&mut out, PAIR_COLUMNS.len() as i16);
        copy::int8(&mut out, *customer);
        copy::text(&mut out, name);
        copy::text(&mut out, &dims[*a]);
        copy::text(&mut out, &dims[*b]);
        copy::text(&mut out, va);
        copy::text(&mut out, vb);
        write_bucket_and_sums(&mut out, *hour, sums);
    }
    Ok(Rollups {
        minutes,
        minute_rows,
        hours,
        hour_rows,
        pair_rows: pairs.len(),
        pairs: out,
        sketches: hll_group::sketches(users, dims, p)?,
    })
}

/// Single rows (`rollup_minute`, `rollup_hour`) as COPY tuples in key order, and how many.
fn single_tuples(rows: Singles<'_>) -> (Vec<u8>, usize) {
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_unstable_by_key(|(k, _)| *k); // &str orders as bytes
    let mut out = Vec::with_capacity(rows.len() * 64);
    for ((customer, name, dim, value, bucket), sums) in &rows {
        copy::tuple(&mut out, HOUR_COLUMNS.len() as i16);
        copy::int8(&mut out, *customer);
        copy::text(&mut out, name);
        copy::text(&mut out, dim);
        copy::text(&mut out, value);
        write_bucket_and_sums(&mut out, *bucket, sums);
    }
    (out, rows.len())
}

fn write_bucket_and_sums(out: &mut Vec<u8>, hour: i64, (n, s): &Sums) {
    copy::timestamptz(out, hour * 1_000_000);
    copy::int8(out, *n);
    copy::opt_float8(out, Some(*s));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hll::DEFAULT_P;
    use crate::time::PG_EPOCH_OFFSET_US;

    fn dims() -> Vec<String> {
        vec!["country".into(), "path".into(), "utm".into()]
    }

    /// The tuples back, each field as text (ints and timestamps as numbers: µs since 2000).
    fn decode(mut b: &[u8], kinds: &[char]) -> Vec<Vec<String>> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
            let (x, rest) = b.split_at(n);
            *b = rest;
            x
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let fields = i16::from_be_bytes(take(&mut b, 2).try_into().unwrap());
            assert_eq!(fields as usize, kinds.len());
            let row = kinds
                .iter()
                .map(|kind| {
                    let len = i32::from_be_bytes(take(&mut b, 4).try_into().unwrap());
                    let x = take(&mut b, len as usize);
                    match kind {
                        'i' => i64::from_be_bytes(x.try_into().unwrap()).to_string(),
                        'f' => f64::from_be_bytes(x.try_into().unwrap()).to_string(),
                        _ => String::from_utf8(x.to_vec()).unwrap(),
                    }
                })
                .collect();
            out.push(row);
        }
        out
    }

    fn rows(want: &[&[&str]]) -> Vec<Vec<String>> {
        want.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    const EVENTS: &str = r#"[[7, "view", 3600, 1.5, "u1", ["DE", "/b", null]],
                             [7, "view", 3600, null, null, ["DE", "/a", "g"]],
                             [7, "view", 7200, 2, "u2", ["DE", "/b", null]],
                             [7, "view", 3600, 1, "u1", ["DE", "/b", "g"]],
                             [5, "a\"b", 0, 0, "u3", [null, "/\u00e9", "x"]]]"#;

    #[test]
    fn hour_rows_sum_the_total_and_each_value_in_key_order() {
        let got = rebuild_rows(EVENTS, &dims(), DEFAULT_P, i64::MAX).unwrap();
        let h = |s: i64| (s * 1_000_000 - PG_EPOCH_OFFSET_US).to_string();
        let (h0, h1, h2) = (h(0), h(3600), h(7200));
        let want = rows(&[
            &["5", "a\"b", "", "", &h0, "1", "0"],
            &["5", "a\"b", "path", "/\u{e9}", &h0, "1", "0"],
            &["5", "a\"b", "utm", "x", &h0, "1", "0"],
            &["7", "view", "", "", &h1, "3", "2.5"],
            &["7", "view", "", "", &h2, "1", "2"],
            &["7", "view", "country", "DE", &h1, "3", "2.5"],
            &["7", "view", "country", "DE", &h2, "1", "2"],
            &["7", "view", "path", "/a", &h1, "1", "0"],
            &["7", "view", "path", "/b", &h1, "2", "2.5"],
            &["7", "view", "path", "/b", &h2, "1", "2"],
            &["7", "view", "utm", "g", &h1, "2", "1"],
        ]);
        assert_eq!(
            decode(&got.hours, &['i', 't', 't', 't', 'i', 'i', 'f']),
            want
        );
        assert_eq!(got.hour_rows, want.len());
    }

    #[test]
    fn pair_rows_need_both_values() {
        let got = rebuild_rows(EVENTS, &dims(), DEFAULT_P, i64::MAX).unwrap();
        let h = |s: i64| (s * 1_000_000 - PG_EPOCH_OFFSET_US).to_string();
        let (h0, h1, h2) = (h(0), h(3600), h(7200));
        let want = rows(&[
            &["5", "a\"b", "path", "utm", "/\u{e9}", "x", &h0, "1", "0"],
            &["7", "view", "country", "path", "DE", "/a", &h1, "1", "0"],
            &["7", "view", "country", "path", "DE", "/b", &h1, "2", "2.5"],
            &["7", "view", "country", "path", "DE", "/b", &h2, "1", "2"],
            &["7", "view", "country", "utm", "DE", "g", &h1, "2", "1"],
            &["7", "view", "path", "utm", "/a", "g", &h1, "1", "0"],
            &["7", "view", "path", "utm", "/b", "g", &h1, "1", "1"],
        ]);
        let kinds = ['i', 't', 't', 't', 't', 't', 'i', 'i', 'f'];
        assert_eq!(decode(&got.pairs, &kinds), want);
        assert_eq!(got.pair_rows, want.len());
    }

    #[test]
    fn sketches_are_hll_groups_of_the_events_with_users() {
        let got = rebuild_rows(EVENTS, &dims(), DEFAULT_P, i64::MAX).unwrap();
        let users = r#"[[7, "view", 3600, "u1", ["DE", "/b", null]],
                        [7, "view", 7200, "u2", ["DE", "/b", null]],
                        [7, "view", 3600, "u1", ["DE", "/b", "g"]],
                        [5, "a\"b", 0, "u3", [null, "/\u00e9", "x"]]]"#;
        let want = hll_group::group_users(users, &dims(), DEFAULT_P).unwrap();
        assert!(got.sketches == want);
        assert!(!got.sketches.is_empty());
    }

    #[test]
    fn minute_rows_from_the_horizon_on_and_hours_of_their_minutes() {
        let events = r#"[[1, "e", 3600, 1, null, ["DE", null, null]],
                         [1, "e", 3660, 2, null, ["DE", null, null]],
                         [1, "e", 7140, 4, null, [null, null, null]]]"#;
        let got = rebuild_rows(events, &dims(), DEFAULT_P, 3660).unwrap();
        let h = |s: i64| (s * 1_000_000 - PG_EPOCH_OFFSET_US).to_string();
        let kinds = ['i', 't', 't', 't', 'i', 'i', 'f'];
        let minutes = rows(&[
            &["1", "e", "", "", &h(3660), "1", "2"],
            &["1", "e", "", "", &h(7140), "1", "4"],
            &["1", "e", "country", "DE", &h(3660), "1", "2"],
        ]);
        assert_eq!(decode(&got.minutes, &kinds), minutes);
        assert_eq!(got.minute_rows, 3);
        let hours = rows(&[
            &["1", "e", "", "", &h(3600), "3", "7"],
            &["1", "e", "country", "DE", &h(3600), "2", "3"],
        ]);
        assert_eq!(decode(&got.hours, &kinds), hours);
        assert!(got.sketches.is_empty() && got.pair_rows == 0);
    }

    #[test]
    fn bad_rows() {
        let p = DEFAULT_P;
        assert!(rebuild_rows("[[1, \"a\", 0, 1, null, [\"x\"]]]", &dims(), p, 0).is_err());
        assert!(rebuild_rows("not json", &dims(), p, 0).is_err());
        assert!(rebuild_rows("[]", &["b".into(), "a".into()], p, 0).is_err());
        let empty = rebuild_rows("[]", &dims(), p, 0).unwrap();
        assert_eq!(
            (empty.hour_rows, empty.pair_rows, empty.sketches.len()),
            (0, 0, 0)
        );
    }
}
