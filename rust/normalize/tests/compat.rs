//! Segment and PostHog bodies mapped to our events (README "Compatible formats").

use _normalize::columns::{decode, Column};
use _normalize::compat::{body_key, normalize, url_path, Call, Compat, Dialect};
use _normalize::time::parse_rfc3339;
use _normalize::{ErrorCode, Limits};

const NOW_US: i64 = 1_700_000_000_000_000;

fn run(body: &str, dialect: Dialect) -> Compat {
    normalize(
        body.as_bytes(),
        NOW_US,
        "7",
        None,
        dialect,
        &Limits::default(),
    )
    .unwrap()
}

/// One row of the COPY payload: (event_id, name, ts, user_id, value, properties JSON).
type Row = (
    Option<String>,
    String,
    i64,
    Option<String>,
    Option<f64>,
    serde_json::Value,
);

fn rows(out: &Compat) -> Vec<Row> {
    let cols = decode(&out.normalized.copy_data).unwrap();
    let text = |i: usize| match &cols[i] {
        Column::Text(v) => v.iter().map(|s| s.map(str::to_owned)).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let (Column::Timestamp(ts), Column::Float(value), Column::Json(props)) =
        (&cols[4], &cols[7], &cols[8])
    else {
        panic!("unexpected column types");
    };
    let (ids, names, users) = (text(2), text(3), text(6));
    (0..ts.len())
        .map(|i| {
            let props = serde_json::from_str(props[i]).unwrap();
            let name = names[i].clone().unwrap();
            (
                ids[i].clone(),
                name,
                ts[i],
                users[i].clone(),
                value[i],
                props,
            )
        })
        .collect()
}

fn us(rfc3339: &str) -> i64 {
    parse_rfc3339(rfc3339.as_bytes()).unwrap()
}

#[test]
fn a_segment_track_maps_its_fields_and_context_to_ours() {
    let out = run(
        r#"{"batch": [{"type": "track", "event": "Order Completed", "messageId": "m-1",
            "userId": "u1", "anonymousId": "a1", "timestamp": "2023-11-14T22:13:00Z",
            "properties": {"revenue": 12.5, "plan": "pro"},
            "context": {"userAgent": "Mozilla/5.0 Chrome/120", "locale": "en-US",
                        "page": {"path": "/checkout", "referrer": "https://google.com/x"},
                        "campaign": {"source": "newsletter", "name": "spring"},
                        "library": {"name": "analytics-python"}}}],
            "writeKey": "k"}"#,
        Dialect::SegmentBatch,
    );
    assert_eq!(out.normalized.accepted, 1, "{:?}", out.normalized.rejected);
    let (id, name, ts, user, value, props) = rows(&out).remove(0);
    assert_eq!(id.as_deref(), Some("m-1"));
    assert_eq!(name, "order completed");
    assert_eq!(ts, us("2023-11-14T22:13:00Z"));
    // userId wins over anonymousId, and the pair is a link.
    assert_eq!(user.as_deref(), Some("u1"));
    assert_eq!(out.identities, [("a1".to_owned(), "u1".to_owned())]);
    assert_eq!(value, Some(12.5));
    assert_eq!(
        props,
        serde_json::json!({"revenue": 12.5, "plan": "pro", "path": "/checkout",
            "referrer": "https://google.com/x", "user_agent": "Mozilla/5.0 Chrome/120",
            "utm.source": "newsletter", "utm.campaign": "spring", "locale": "en-US"})
    );
}

#[test]
fn segment_skew_correction_uses_the_message_or_batch_sent_at() {
    let body = r#"{"sentAt": "2023-11-14T22:13:20Z", "batch": [
        {"type": "track", "event": "a", "userId": "u", "timestamp": "2023-11-14T22:13:10Z"},
        {"type": "track", "event": "b", "userId": "u", "timestamp": "2023-11-14T22:13:10Z",
         "sentAt": "2023-11-14T22:13:15Z"}]}"#;
    let ts: Vec<i64> = rows(&run(body, Dialect::SegmentBatch))
        .iter()
        .map(|r| r.2)
        .collect();
    // event time = timestamp + (received_at - sentAt)
    assert_eq!(ts, [NOW_US - 10_000_000, NOW_US - 5_000_000]);
}

#[test]
fn segment_anonymous_events_identify_and_alias() {
    let out = run(
        r#"{"batch": [
            {"type": "track", "event": "a", "anonymousId": "anon", "userId": ""},
            {"type": "identify", "userId": "u1", "anonymousId": "anon", "traits": {"x": 1}},
            {"type": "identify", "userId": "u2"},
            {"type": "identify", "traits": {}},
            {"type": "alias", "previousId": "old", "userId": "u1"},
            {"type": "group", "userId": "u1", "groupId": "g"},
            {"type": "page", "userId": "u1", "name": "Docs",
             "properties": {"path": "/docs", "referrer": "https://a.io/"}},
            {"type": "nope", "userId": "u1"},
            {"event": "no type", "userId": "u1"}]}"#,
        Dialect::SegmentBatch,
    );
    let rows = rows(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].3.as_deref(), Some("anon"));
    assert_eq!(
        (rows[1].1.as_str(), rows[1].5["path"].as_str()),
        ("page view", Some("/docs"))
    );
    assert_eq!(rows[1].5["name"], "Docs");
    let links = [("anon", "u1"), ("old", "u1")].map(|(a, u)| (a.to_owned(), u.to_owned()));
    assert_eq!(out.identities, links);
    let rejected: Vec<(usize, ErrorCode)> = out
        .normalized
        .rejected
        .iter()
        .map(|r| (r.index, r.code))
        .collect();
    assert_eq!(
        rejected,
        [
            (3, ErrorCode::InvalidUserId),
            (5, ErrorCode::InvalidEvent),
            (7, ErrorCode::InvalidEvent),
            (8, ErrorCode::InvalidEvent)
        ]
    );
}

#[test]
fn a_single_segment_call_takes_its_type_from_the_path() {
    let track = Dialect::Segment(Call::Track);
    let out = run(r#"{"event": "x", "userId": 5, "messageId": "m"}"#, track);
    assert_eq!(rows(&out)[0].3.as_deref(), Some("5"));
    let identify = Dialect::Segment(Call::Identify);
    let out = run(r#"{"userId": "u", "anonymousId": "a"}"#, identify);
    assert_eq!((out.normalized.accepted, out.identities.len()), (0, 1));
}

#[test]
fn segment_bodies_of_the_wrong_shape_are_refused_whole() {
    let limits = Limits::default();
    let refuse = |body: &str, dialect| {
        normalize(body.as_bytes(), NOW_US, "7", None, dialect, &limits)
            .unwrap_err()
            .code
    };
    let batch = Dialect::SegmentBatch;
    assert_eq!(refuse(r#"{"events": []}"#, batch), ErrorCode::InvalidShape);
    assert_eq!(refuse(r#"{"batch": {}}"#, batch), ErrorCode::InvalidShape);
    assert_eq!(
        refuse(r#"{"batch": [], "batch": []}"#, batch),
        ErrorCode::InvalidShape
    );
    assert_eq!(refuse(r#"[{}]"#, batch), ErrorCode::InvalidShape);
    assert_eq!(
        refuse(r#"{"batch": [], "sentAt": 1.5e300}"#, batch),
        ErrorCode::InvalidSentAt
    );
    assert_eq!(refuse(r#"{"batch": [1,]}"#, batch), ErrorCode::InvalidJson);
    let few = Limits {
        max_events: 1,
        ..limits
    };
    let two = br#"{"batch": [{"type": "track"}, {"type": "track"}]}"#;
    let err = normalize(two, NOW_US, "7", None, batch, &few).unwrap_err();
    assert_eq!(err.code, ErrorCode::TooManyEvents);
}

#[test]
fn our_limits_apply_to_mapped_events() {
    let big = "x".repeat(40_000);
    let body = format!(
        r#"{{"batch": [{{"type": "track", "event": "a", "userId": "u", "properties": {{"s": "{big}"}}}},
            {{"type": "track", "event": "a", "userId": "{}"}}]}}"#,
        "u".repeat(300)
    );
    let out = run(&body, Dialect::SegmentBatch);
    let codes: Vec<ErrorCode> = out.normalized.rejected.iter().map(|r| r.code).collect();
    assert_eq!(codes, [ErrorCode::EventTooLarge, ErrorCode::InvalidUserId]);
}

#[test]
fn a_posthog_batch_maps_its_fields_and_properties_to_ours() {
    let body = r#"{"api_key": "ak_1", "sent_at": "2023-11-14T22:13:20Z", "batch": [
        {"event": "$pageview", "distinct_id": "d1", "uuid": "0190-1",
         "timestamp": "2023-11-14T22:13:10Z",
         "properties": {"$current_url": "https://x.io/pricing?a=1#f", "$referrer": "$direct",
                        "$browser": "Firefox", "utm_source": "ads", "token": "ak_1",
                        "$set": {"email": "a@b"}, "$lib": "posthog-python"}},
        {"event": "$identify", "distinct_id": "u9",
         "properties": {"$anon_distinct_id": "d1", "$pathname": "/in", "path": "/mine"}}]}"#;
    let out = run(body, Dialect::PostHog);
    assert_eq!(out.normalized.accepted, 2, "{:?}", out.normalized.rejected);
    let rows = rows(&out);
    let (id, name, ts, user, _, props) = &rows[0];
    assert_eq!(
        (id.as_deref(), name.as_str()),
        (Some("0190-1"), "$pageview")
    );
    assert_eq!((*ts, user.as_deref()), (NOW_US - 10_000_000, Some("d1")));
    assert_eq!(
        *props,
        serde_json::json!({"$current_url": "https://x.io/pricing?a=1#f", "$referrer": "$direct",
            "$browser": "Firefox", "utm_source": "ads", "$lib": "posthog-python",
            "url": "https://x.io/pricing?a=1#f", "path": "/pricing", "browser": "Firefox",
            "utm.source": "ads"})
    );
    // The producer's own `path` wins over the mapped `$pathname`.
    assert_eq!(rows[1].5["path"], "/mine");
    assert_eq!(out.identities, [("d1".to_owned(), "u9".to_owned())]);
    let key = body_key(body.as_bytes(), None, Dialect::PostHog, &Limits::default()).unwrap();
    assert_eq!(key.as_deref(), Some("ak_1"));
}

#[test]
fn posthog_keys_come_from_the_body_in_each_of_its_shapes() {
    let key =
        |body: &str| body_key(body.as_bytes(), None, Dialect::PostHog, &Limits::default()).unwrap();
    assert_eq!(key(r#"{"token": "t", "event": "e"}"#).as_deref(), Some("t"));
    assert_eq!(
        key(r#"[{"event": "e", "properties": {"token": "p"}}]"#).as_deref(),
        Some("p")
    );
    assert_eq!(key(r#"{"event": "e"}"#), None);
    let seg = body_key(
        br#"{"batch": [], "writeKey": "w"}"#,
        None,
        Dialect::SegmentBatch,
        &Limits::default(),
    );
    assert_eq!(seg.unwrap().as_deref(), Some("w"));
    let out = run(
        r#"[{"event": "e", "distinct_id": 3}, {"event": "f"}]"#,
        Dialect::PostHog,
    );
    assert_eq!(out.normalized.accepted, 2);
    assert_eq!(rows(&out)[0].3.as_deref(), Some("3"));
}

#[test]
fn a_gzip_posthog_body_is_decoded_under_our_caps() {
    let err = normalize(
        b"not gzip",
        NOW_US,
        "7",
        Some("gzip"),
        Dialect::PostHog,
        &Limits::default(),
    );
    assert_eq!(err.unwrap_err().code, ErrorCode::InvalidGzip);
}

#[test]
fn url_paths() {
    assert_eq!(url_path("https://x.io/a/b?c#d").as_deref(), Some("/a/b"));
    assert_eq!(url_path("https://x.io").as_deref(), Some("/"));
    assert_eq!(url_path("https://x.io?q=1").as_deref(), Some("/"));
    assert_eq!(url_path("/relative"), None);
}
