//! libFuzzer target over the whole normalizer: every body framing (JSON single and batch,
//! NDJSON), gzip'd or not, under the default and tight limits, and `X-Signature` headers.
//!
//! An input is one control byte, then the payload (the layout is in rust/normalize/README.md,
//! "Fuzzing"; tests/test_fuzz_corpus.py reads the same layout to run the corpus through the
//! Python reference):
//!
//! | mask   | meaning |
//! |--------|---------|
//! | `0x01` | NDJSON (else JSON: a single event or a batch, as the payload says) |
//! | `0x06` | encoding, `(control >> 1) & 3`: 0 none, 1 gzip (the payload, compressed here), 2 gzip (the payload sent as the gzip stream itself), 3 identity |
//! | `0x08` | tight limits ([`tight`]) instead of the defaults |
//! | `0x10` | signature: the payload's first line is an `X-Signature` header, the rest the body |
//! | `0x20` | (with `0x10`) a valid signature of the body goes first in the header |
//! | `0x40` | the encoding name in upper case; with no encoding, `br` (unsupported) |
//! | `0x80` | reserved |
//!
//! Besides "no panic", each run checks what must hold of any outcome: codes of the right
//! scope, `accepted + rejected == total`, and every COPY tuple well formed and within the
//! rules (lengths, NUL-free text, timestamps in range, |value| ≤ MAX_ABS_VALUE, the
//! properties' key count and lengths); a body gzip'd here normalizes exactly as the plain
//! one (bar a decompression bomb); a header led by a valid signature verifies or is
//! malformed, never a mismatch, and a verified body normalized with its signing time gets
//! the same verdicts as unsigned.
#![no_main]

use _normalize::error::Scope;
use _normalize::event::{COPY_SCHEMA, DEDUP_FINGERPRINT, MAX_ABS_VALUE};
use _normalize::signature::{self, SignatureError};
use _normalize::time::{MAX_US, MIN_US, PG_EPOCH_OFFSET_US};
use _normalize::{normalize_batch, normalize_receipt, BodyError, ErrorCode, Limits, Normalized};
use flate2::write::GzEncoder;
use flate2::Compression;
use libfuzzer_sys::fuzz_target;
use std::io::Write;

const NOW_US: i64 = 1_700_000_000_000_000;
const NOW_S: i64 = NOW_US / 1_000_000;
const SECRET: &[u8] = b"fuzz-secret";
const CUSTOMER: &str = "c";

/// Small caps, so that every size and count rule is reached by small inputs (a gzip bomb is
/// `decompression_bomb` under the defaults, `body_too_large` here).
fn tight() -> Limits {
    Limits {
        max_body_bytes: 2048,
        max_ratio: 2,
        max_events: 3,
        max_event_bytes: 120,
        max_name_chars: 3,
        max_event_id_chars: 4,
        max_user_id_chars: 4,
        max_property_depth: 2,
        max_properties: 3,
        max_key_chars: 4,
        max_string_bytes: 5,
        max_future_us: 1_000_000,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, payload)) = data.split_first() else {
        return;
    };
    let ndjson = control & 1 != 0;
    let upper = control & 64 != 0;
    let limits = if control & 8 != 0 {
        tight()
    } else {
        Limits::default()
    };
    let (header, payload) = if control & 16 != 0 {
        let (line, rest) = match payload.iter().position(|&b| b == b'\n') {
            Some(i) => (&payload[..i], &payload[i + 1..]),
            None => (payload, &[][..]),
        };
        (Some(String::from_utf8_lossy(line).into_owned()), rest)
    } else {
        (None, payload)
    };
    let compressed;
    let (body, encoding): (&[u8], Option<&str>) = match (control >> 1) & 3 {
        0 => (payload, upper.then_some("br")),
        1 => {
            compressed = gzip(payload);
            (&compressed, Some(if upper { "GZIP" } else { "gzip" }))
        }
        2 => (payload, Some(if upper { "GZIP" } else { "gzip" })),
        _ => (payload, Some(if upper { "IDENTITY" } else { "identity" })),
    };

    let result = normalize_batch(body, NOW_US, CUSTOMER, encoding, ndjson, &limits);
    check_outcome(&result, &limits);
    if (control >> 1) & 3 == 1 {
        let plain = normalize_batch(payload, NOW_US, CUSTOMER, None, ndjson, &limits);
        same_outcome(&result, &plain);
    }

    if let Some(header) = header {
        let signed = control & 32 != 0;
        let header = if signed {
            let valid = signature::sign(SECRET, body, NOW_S);
            assert_eq!(signature::verify(SECRET, &valid, body, NOW_S, 300), Ok(()));
            format!("{valid},{header}")
        } else {
            header
        };
        match signature::verify_at(SECRET, &header, body, NOW_S, 300) {
            Ok(t) => {
                assert!(
                    (t - NOW_S).abs() <= 300 && (!signed || t == NOW_S),
                    "{header:?}"
                );
                // A verified body is normalized with its signing time (replays dedup): the
                // same verdicts, only fingerprints of events without id and ts may differ.
                let receipt =
                    normalize_receipt(body, NOW_US, CUSTOMER, encoding, ndjson, &limits, Some(t));
                check_outcome(&receipt, &limits);
                match (&receipt, &result) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!((a.accepted, a.total), (b.accepted, b.total));
                        assert_eq!(a.rejected, b.rejected);
                    }
                    (Err(a), Err(b)) => assert_eq!(a, b),
                    _ => panic!("signed and unsigned outcomes differ"),
                }
            }
            Err(e) => {
                assert_eq!(e.code().scope(), Scope::Signature, "{e:?}");
                assert!(!e.message().is_empty());
                if signed {
                    assert!(
                        matches!(e, SignatureError::Malformed(_)),
                        "{header:?}: {e:?}"
                    );
                }
            }
        }
    }
});

fn check_outcome(result: &Result<Normalized, BodyError>, limits: &Limits) {
    let out = match result {
        Err(e) => {
            assert!(
                matches!(e.code.scope(), Scope::Body | Scope::BodyOrEvent),
                "{e:?}"
            );
            return;
        }
        Ok(out) => out,
    };
    assert!(out.total <= limits.max_events);
    assert_eq!(out.accepted + out.rejected.len(), out.total);
    let mut previous = None;
    for r in &out.rejected {
        assert!(
            matches!(r.code.scope(), Scope::Event | Scope::BodyOrEvent),
            "{r:?}"
        );
        assert!(r.index < out.total && previous < Some(r.index), "{r:?}");
        previous = Some(r.index);
    }
    let mut data = out.copy_data.as_slice();
    let mut rows = 0;
    while !data.is_empty() {
        check_tuple(&mut data, limits);
        rows += 1;
    }
    assert_eq!(rows, out.accepted);
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    assert!(data.len() >= n, "truncated COPY tuple");
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

fn text(raw: &[u8]) -> &str {
    let s = std::str::from_utf8(raw).expect("text column is UTF-8");
    assert!(!s.contains('\0'), "PostgreSQL text cannot hold NUL: {s:?}");
    s
}

fn trimmed_within(s: &str, max_chars: usize) {
    assert!(!s.is_empty() && s.trim() == s, "{s:?}");
    assert!(s.chars().count() <= max_chars, "{s:?}");
}

/// Reads one COPY tuple off `data` and checks each field against the README's rules.
fn check_tuple(data: &mut &[u8], limits: &Limits) {
    let fields = i16::from_be_bytes(take(data, 2).try_into().unwrap());
    assert_eq!(usize::try_from(fields).unwrap(), COPY_SCHEMA.len());
    let mut event_id = None;
    let mut dedup_key = "";
    let mut flags = 0;
    for &(column, pg_type) in COPY_SCHEMA {
        let len = i32::from_be_bytes(take(data, 4).try_into().unwrap());
        if len == -1 {
            assert!(
                matches!(column, "event_id" | "user_id" | "value"),
                "{column} is NULL"
            );
            continue;
        }
        let raw = take(data, usize::try_from(len).expect("a length or -1"));
        match (column, pg_type) {
            ("customer_id", _) => assert_eq!(text(raw), CUSTOMER),
            ("dedup_key", _) => dedup_key = text(raw),
            ("event_id", _) => {
                let id = text(raw);
                trimmed_within(id, limits.max_event_id_chars);
                event_id = Some(id);
            }
            ("name", _) => {
                let name = text(raw);
                trimmed_within(name, limits.max_name_chars);
                assert!(!name.contains("  ") && !name.chars().any(char::is_control));
            }
            ("user_id", _) => trimmed_within(text(raw), limits.max_user_id_chars),
            (_, "timestamptz") => {
                let pg = i64::from_be_bytes(raw.try_into().expect("8 bytes"));
                let unix = pg + PG_EPOCH_OFFSET_US;
                assert!((MIN_US..=MAX_US).contains(&unix), "{column} {unix}");
                if column == "ts" {
                    assert!(unix <= NOW_US + limits.max_future_us, "ts {unix}");
                } else {
                    assert_eq!(unix, NOW_US);
                }
            }
            ("value", _) => {
                let v = f64::from_be_bytes(raw.try_into().expect("8 bytes"));
                assert!(v.is_finite() && v.abs() <= MAX_ABS_VALUE, "value {v}");
            }
            ("properties", _) => check_properties(raw, limits),
            ("flags", _) => {
                flags = i16::from_be_bytes(raw.try_into().expect("2 bytes"));
                assert!((0..16).contains(&flags), "flags {flags}");
            }
            _ => panic!("unexpected column {column} {pg_type}"),
        }
    }
    match event_id {
        Some(id) => {
            assert_eq!(dedup_key, format!("id:{id}"));
            assert_eq!(flags & DEDUP_FINGERPRINT, 0);
        }
        None => {
            assert!(dedup_key.starts_with("fp:") && dedup_key.len() == 35);
            assert_ne!(flags & DEDUP_FINGERPRINT, 0);
        }
    }
}

fn check_properties(raw: &[u8], limits: &Limits) {
    let (&version, json) = raw.split_first().expect("jsonb version byte");
    assert_eq!(version, 1);
    let value: serde_json::Value = serde_json::from_slice(json).expect("jsonb text is JSON");
    let object = value.as_object().expect("properties are an object");
    // serde_json's map is sorted by bytes and holds each key once: written back compactly in
    // jsonb's key order (a stable sort by length), it is the same text only if the keys were
    // unique, in that order, and nothing else differs.
    let mut entries: Vec<(&String, &serde_json::Value)> = object.iter().collect();
    entries.sort_by_key(|(key, _)| key.len());
    let mut rewritten = b"{".to_vec();
    for (i, (key, leaf)) in entries.into_iter().enumerate() {
        if i > 0 {
            rewritten.push(b',');
        }
        serde_json::to_writer(&mut rewritten, key).expect("a JSON string");
        rewritten.push(b':');
        serde_json::to_writer(&mut rewritten, leaf).expect("a JSON value");
    }
    rewritten.push(b'}');
    assert!(rewritten == json, "{}", String::from_utf8_lossy(json));
    assert!(object.len() <= limits.max_properties);
    for (key, leaf) in object {
        assert!(!key.is_empty() && !key.contains('\0'));
        assert!(key.chars().count() <= limits.max_key_chars, "{key:?}");
        let items = match leaf {
            serde_json::Value::Array(items) => items.as_slice(),
            other => std::slice::from_ref(other),
        };
        for item in items {
            match item {
                serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                    panic!("nested leaf {item}")
                }
                serde_json::Value::String(s) => {
                    assert!(s.len() <= limits.max_string_bytes && !s.contains('\0'));
                }
                _ => {}
            }
        }
    }
}

/// A body gzip'd by the harness must normalize as the plain body does, unless the gzip
/// caps refused it (the plain body has no ratio to exceed).
fn same_outcome(gzipped: &Result<Normalized, BodyError>, plain: &Result<Normalized, BodyError>) {
    match (gzipped, plain) {
        (Err(e), _) if e.code == ErrorCode::DecompressionBomb => {}
        (Ok(a), Ok(b)) => {
            assert_eq!((a.accepted, a.total), (b.accepted, b.total));
            assert_eq!(a.rejected, b.rejected);
            assert!(a.copy_data == b.copy_data, "COPY data differs");
        }
        (Err(a), Err(b)) => assert_eq!(a.code, b.code),
        (a, b) => panic!(
            "gzip {:?} but plain {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        ),
    }
}
