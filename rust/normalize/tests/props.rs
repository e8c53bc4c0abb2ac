//! Property tests: no input panics, and the COPY payload always frames into exactly
//! `accepted` well-formed 10-field tuples.

use _normalize::{normalize_batch, Limits};
use proptest::prelude::*;

const NOW_US: i64 = 1_700_000_000_000_000;

/// Walks the binary COPY tuples and returns how many there are, or panics if malformed.
fn count_tuples(mut data: &[u8]) -> usize {
    let mut n = 0;
    while !data.is_empty() {
        let fields = i16::from_be_bytes([data[0], data[1]]);
        assert_eq!(fields, 10);
        data = &data[2..];
        for _ in 0..fields {
            let len = i32::from_be_bytes(data[..4].try_into().unwrap());
            data = &data[4..];
            if len >= 0 {
                data = &data[len as usize..];
            }
        }
        n += 1;
    }
    n
}

fn check(body: &[u8], ndjson: bool, encoding: Option<&str>) {
    if let Ok(out) = normalize_batch(body, NOW_US, "c", encoding, ndjson, &Limits::default()) {
        assert_eq!(count_tuples(&out.copy_data), out.accepted);
        assert_eq!(out.accepted + out.rejected.len(), out.total);
    }
}

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        "[a-z .\\\\\"\u{0}-\u{1f}\u{e9}\u{1f600}]{0,6}"
            .prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("\"\\ud800\"".to_string()),
        Just("-0".to_string()),
        Just("1e999".to_string()),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    "(name|ts|value|properties|user_id|event_id|events|sent_at|a|a.b)",
                    inner
                ),
                0..5
            )
            .prop_map(|kv| {
                let body: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), ndjson: bool) {
        check(&body, ndjson, None);
        check(&body, ndjson, Some("gzip"));
    }

    #[test]
    fn json_shaped_input_never_panics(doc in json_value(), ndjson: bool) {
        check(doc.as_bytes(), ndjson, None);
        let batch = format!("{{\"events\":[{doc},{doc}],\"sent_at\":1700000000000}}");
        check(batch.as_bytes(), false, None);
    }
}

#[test]
fn pathological_nesting_is_an_error_not_a_crash() {
    for depth in [128usize, 10_000, 1_000_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = normalize_batch(
            body.as_bytes(),
            NOW_US,
            "c",
            None,
            false,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.code, "invalid_json");
        let batch = format!(
            "{{\"events\":[{{\"name\":\"x\",\"properties\":{{\"a\":{}}}}}]}}",
            "[".repeat(depth)
        );
        let err = normalize_batch(
            batch.as_bytes(),
            NOW_US,
            "c",
            None,
            false,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.code, "invalid_json");
    }
}
