//! Segment's and PostHog's capture formats to our events. Their field names are mapped here,
//! once per message, into an event of our own shape, which then goes through exactly the rules
//! of `/v1/*` ([`event::encode`]: validation, limits, dedup key, COPY tuple). The README's
//! "Compatible formats" section is the contract.

use crate::body::{self, Framed};
use crate::error::{reject, BodyError, ErrorCode, EventError, Rejection};
use crate::event::{self, bounded_text, first_duplicate, is_ws, Context, Receipt, Scratch};
use crate::json::{self, KeySeed, J};
use crate::limits::Limits;
use crate::{time, Normalized};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A Segment call, named by the path (`/v1/track`) or by a batch message's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Track,
    Page,
    Screen,
    Identify,
    Alias,
    Group,
}

impl Call {
    pub fn parse(s: &str) -> Option<Call> {
        Some(match s {
            "track" => Call::Track,
            "page" => Call::Page,
            "screen" => Call::Screen,
            "identify" => Call::Identify,
            "alias" => Call::Alias,
            "group" => Call::Group,
            _ => return None,
        })
    }
}

/// Which format a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Segment's `/v1/batch`: `{"batch": [...], "sentAt": ...}`, each message with a `type`.
    SegmentBatch,
    /// One Segment message, its call named by the path.
    Segment(Call),
    /// PostHog's `/batch`, `/capture`, `/i/v0/e`: a message, `{"batch": [...]}` or `[...]`.
    PostHog,
}

impl Dialect {
    /// `"segment"` (a batch), `"segment/<call>"` or `"posthog"`.
    pub fn parse(s: &str) -> Option<Dialect> {
        match s {
            "segment" => Some(Dialect::SegmentBatch),
            "posthog" => Some(Dialect::PostHog),
            _ => s
                .strip_prefix("segment/")
                .and_then(Call::parse)
                .map(Dialect::Segment),
        }
    }

    fn key_fields(self) -> &'static [&'static str] {
        match self {
            Dialect::PostHog => &["api_key", "token", "properties.token"],
            _ => &["writeKey"],
        }
    }
}

/// The result of one body: its events, and the (anonymous id, user id) links it made.
#[derive(Debug, Default)]
pub struct Compat {
    pub normalized: Normalized,
    pub identities: Vec<(String, String)>,
}

/// The API key a body carries (Segment `writeKey`; PostHog `api_key` or `token`, at the top,
/// or in the first message or its `properties`), for producers that send no header.
pub fn body_key(
    body: &[u8],
    content_encoding: Option<&str>,
    dialect: Dialect,
    limits: &Limits,
) -> Result<Option<String>, BodyError> {
    let decoded = body::decode(body, content_encoding, limits)?;
    Ok(frame(&decoded, dialect, limits)?.key)
}

/// Decodes and frames a body in `dialect`, maps each message and encodes it by our rules.
pub fn normalize(
    body: &[u8],
    received_at_us: i64,
    customer_id: &str,
    content_encoding: Option<&str>,
    dialect: Dialect,
    limits: &Limits,
) -> Result<Compat, BodyError> {
    let decoded = body::decode(body, content_encoding, limits)?;
    let framed = frame(&decoded, dialect, limits)?;
    let mut out = Compat::default();
    out.normalized.total = framed.messages.len();
    let mut scratch = Scratch::default();
    for (index, f) in framed.messages.into_iter().enumerate() {
        let result = if f.raw_len > limits.max_event_bytes {
            Err((
                ErrorCode::EventTooLarge,
                format!(
                    "event is {} bytes, over {}",
                    f.raw_len, limits.max_event_bytes
                ),
            ))
        } else {
            match f.event {
                Ok(message) => {
                    let ctx = Context {
                        limits,
                        customer_id,
                        received_at_us,
                        sent_at_us: framed.sent_at_us,
                        receipt: Receipt::Received,
                    };
                    one(message, index, dialect, &ctx, &mut scratch, &mut out)
                }
                Err(e) => Err((
                    ErrorCode::InvalidJson,
                    format!("event is not valid JSON: {e}"),
                )),
            }
        };
        if let Err((code, message)) = result {
            out.normalized.rejected.push(Rejection {
                index,
                code,
                message,
            });
        }
    }
    Ok(out)
}

type Pairs<'a> = Vec<(Cow<'a, str>, J<'a>)>;

/// A message mapped to our shape: the event to store (if any), its own `sentAt`, a link.
struct Mapped<'a> {
    event: Option<Pairs<'a>>,
    sent_at_us: Option<i64>,
    link: Option<(J<'a>, J<'a>)>,
}

fn one<'a>(
    message: J<'a>,
    index: usize,
    dialect: Dialect,
    ctx: &Context,
    scratch: &mut Scratch,
    out: &mut Compat,
) -> Result<(), EventError> {
    let J::Obj(pairs) = message else {
        return reject(ErrorCode::InvalidEvent, "event must be a JSON object");
    };
    if let Some(key) = first_duplicate(pairs.iter().map(|(k, _)| k.as_ref())) {
        return reject(
            ErrorCode::DuplicateKey,
            format!("key {key:?} appears twice"),
        );
    }
    let mapped = match dialect {
        Dialect::PostHog => posthog(pairs),
        Dialect::SegmentBatch => segment(pairs, None),
        Dialect::Segment(call) => segment(pairs, Some(call)),
    }?;
    // Checked before the event is written, so a message is taken whole or not at all.
    let link = match mapped.link {
        Some((anonymous, user)) => link(&anonymous, &user, ctx.limits)?,
        None => None,
    };
    if let Some(event) = mapped.event {
        let ctx = Context {
            sent_at_us: mapped.sent_at_us.or(ctx.sent_at_us),
            ..*ctx
        };
        event::encode(
            &J::Obj(event),
            index,
            &ctx,
            scratch,
            &mut out.normalized.copy_data,
        )?;
        out.normalized.accepted += 1;
    }
    out.identities.extend(link);
    Ok(())
}

fn link(anonymous: &J, user: &J, limits: &Limits) -> Result<Option<(String, String)>, EventError> {
    let text = |v, what| {
        bounded_text(
            Some(v),
            limits.max_user_id_chars,
            true,
            ErrorCode::InvalidUserId,
            what,
        )
    };
    let anonymous = text(anonymous, "anonymousId")?;
    let user = text(user, "userId")?;
    Ok(match (anonymous, user) {
        (Some(a), Some(u)) if a != u => Some((a.into_owned(), u.into_owned())),
        _ => None,
    })
}

fn take<'a>(pairs: &mut Pairs<'a>, key: &str) -> Option<J<'a>> {
    let i = pairs.iter().position(|(k, _)| k == key)?;
    Some(pairs.swap_remove(i))
        .map(|(_, v)| v)
        .filter(|v| *v != J::Null)
}

fn get<'x, 'a>(v: Option<&'x J<'a>>, path: &[&str]) -> Option<&'x J<'a>> {
    path.iter().try_fold(v?, |v, key| match v {
        J::Obj(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    })
}

/// An id that is there: not null, not an empty or blank string.
fn present(v: Option<J>) -> Option<J> {
    v.filter(|v| !matches!(v, J::Str(s) if s.trim_matches(is_ws).is_empty()))
}

/// Properties as sent, with `mapped` (our dimension's key, the value it comes from) added
/// where the producer's own properties do not already hold that key (theirs win).
fn properties<'a>(
    sent: Option<J<'a>>,
    mapped: Vec<(&'static str, Option<J<'a>>)>,
) -> Option<J<'a>> {
    let mut props = match sent {
        None => Vec::new(),
        Some(J::Obj(props)) => props,
        Some(other) => return Some(other), // refused by our rules as `invalid_properties`
    };
    for (key, value) in mapped {
        let Some(value) = value.filter(|v| *v != J::Null) else {
            continue;
        };
        let top = key.split('.').next().unwrap_or(key);
        let taken = props.iter().any(|(k, _)| {
            let k = k.trim_matches(is_ws);
            k == key || k == top
        });
        if !taken {
            props.push((Cow::Borrowed(key), value));
        }
    }
    Some(J::Obj(props))
}

/// Our event's fields, those present, in our names.
fn event<'a>(fields: [(&'static str, Option<J<'a>>); 6]) -> Pairs<'a> {
    fields
        .into_iter()
        .filter_map(|(k, v)| Some((Cow::Borrowed(k), v?)))
        .collect()
}

/// `value`: a numeric `value` property, else a numeric `revenue` (Segment's spec names both).
fn numeric_value<'a>(props: Option<&J<'a>>) -> Option<J<'a>> {
    ["value", "revenue"]
        .iter()
        .filter_map(|k| get(props, &[k]))
        .find(|v| matches!(v, J::I64(_) | J::U64(_) | J::F64(_)))
        .cloned()
}

fn segment(mut m: Pairs, call: Option<Call>) -> Result<Mapped, EventError> {
    let call = match (call, take(&mut m, "type")) {
        (Some(call), _) => call,
        (None, Some(J::Str(t))) => Call::parse(&t).ok_or_else(|| {
            (
                ErrorCode::InvalidEvent,
                format!("unknown Segment message type {t:?}"),
            )
        })?,
        (None, _) => {
            return reject(
                ErrorCode::InvalidEvent,
                "a Segment message needs a type: track, page, screen, identify or alias",
            )
        }
    };
    let sent_at_us = match take(&mut m, "sentAt") {
        None => None,
        Some(v) => Some(time::from_json(&v).ok_or((
            ErrorCode::InvalidTs,
            "sentAt must be an RFC 3339 string or epoch milliseconds".to_owned(),
        ))?),
    };
    let user = present(take(&mut m, "userId"));
    let anonymous = present(take(&mut m, "anonymousId"));
    let no_id = || {
        reject(
            ErrorCode::InvalidUserId,
            "a userId or anonymousId is required",
        )
    };
    let name = match call {
        Call::Identify => {
            if user.is_none() && anonymous.is_none() {
                return no_id();
            }
            let link = anonymous.zip(user);
            return Ok(Mapped {
                event: None,
                sent_at_us,
                link,
            });
        }
        Call::Alias => {
            let previous = present(take(&mut m, "previousId"));
            let (Some(previous), Some(user)) = (previous, user) else {
                return reject(
                    ErrorCode::InvalidUserId,
                    "alias needs previousId and userId",
                );
            };
            let link = Some((previous, user));
            return Ok(Mapped {
                event: None,
                sent_at_us,
                link,
            });
        }
        Call::Group => {
            return reject(
                ErrorCode::InvalidEvent,
                "Segment group calls are not stored",
            )
        }
        Call::Track => take(&mut m, "event"),
        Call::Page => Some(J::Str(Cow::Borrowed("page view"))),
        Call::Screen => Some(J::Str(Cow::Borrowed("screen view"))),
    };
    if user.is_none() && anonymous.is_none() {
        return no_id();
    }
    let context = take(&mut m, "context");
    let c = |path: &[&str]| get(context.as_ref(), path).cloned();
    let sent = take(&mut m, "properties");
    let value = numeric_value(sent.as_ref());
    let (page_name, category) = match call {
        Call::Page | Call::Screen => (take(&mut m, "name"), take(&mut m, "category")),
        _ => (None, None),
    };
    let props = properties(
        sent,
        vec![
            ("name", page_name),
            ("category", category),
            ("path", c(&["page", "path"])),
            ("referrer", c(&["page", "referrer"])),
            ("url", c(&["page", "url"])),
            ("user_agent", c(&["userAgent"])),
            ("utm.source", c(&["campaign", "source"])),
            ("utm.medium", c(&["campaign", "medium"])),
            ("utm.campaign", c(&["campaign", "name"])),
            ("utm.term", c(&["campaign", "term"])),
            ("utm.content", c(&["campaign", "content"])),
            ("country", c(&["location", "country"])),
            ("locale", c(&["locale"])),
        ],
    );
    let ts = take(&mut m, "timestamp").or_else(|| take(&mut m, "originalTimestamp"));
    let link = match (&anonymous, &user) {
        (Some(a), Some(u)) => Some((a.clone(), u.clone())),
        _ => None,
    };
    // The identified id wins: it is the one that stays the same across a user's devices.
    let user_id = user.or(anonymous);
    let event = event([
        ("name", name),
        ("event_id", take(&mut m, "messageId")),
        ("ts", ts),
        ("user_id", user_id),
        ("value", value),
        ("properties", props),
    ]);
    Ok(Mapped {
        event: Some(event),
        sent_at_us,
        link,
    })
}

/// The path of an absolute URL (`/` when it has none), without query or fragment.
pub fn url_path(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let tail = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    Some(if path.is_empty() { "/" } else { path }.to_owned())
}

fn posthog(mut m: Pairs) -> Result<Mapped, EventError> {
    let mut sent = take(&mut m, "properties");
    let distinct_id = present(take(&mut m, "distinct_id"))
        .or_else(|| present(get(sent.as_ref(), &["distinct_id"]).cloned()));
    if let Some(J::Obj(props)) = &mut sent {
        // The key is a credential here, and person properties are not event properties.
        props.retain(|(k, _)| !matches!(k.as_ref(), "token" | "$set" | "$set_once"));
    }
    let p = |key: &str| get(sent.as_ref(), &[key]).cloned();
    let name = take(&mut m, "event");
    let other = match name.as_ref().and_then(J::as_str) {
        Some("$identify") => p("$anon_distinct_id"),
        Some("$create_alias") => p("alias"),
        _ => None,
    };
    let url = p("$current_url");
    let path = p("$pathname").or_else(|| {
        let url = url.as_ref()?.as_str()?;
        url_path(url).map(|p| J::Str(Cow::Owned(p)))
    });
    let referrer = p("$referrer").filter(|r| r.as_str() != Some("$direct"));
    let value = numeric_value(sent.as_ref());
    let mapped = vec![
        ("url", url),
        ("path", path),
        ("referrer", referrer),
        ("browser", p("$browser")),
        ("user_agent", p("$raw_user_agent")),
        ("utm.source", p("utm_source")),
        ("utm.medium", p("utm_medium")),
        ("utm.campaign", p("utm_campaign")),
        ("utm.term", p("utm_term")),
        ("utm.content", p("utm_content")),
        ("country", p("$geoip_country_code")),
    ];
    let props = properties(sent, mapped);
    let link = other.zip(distinct_id.clone());
    let event = event([
        ("name", name),
        ("event_id", take(&mut m, "uuid")),
        ("ts", take(&mut m, "timestamp")),
        ("user_id", distinct_id),
        ("value", value),
        ("properties", props),
    ]);
    Ok(Mapped {
        event: Some(event),
        sent_at_us: None,
        link,
    })
}

/// A body split into its messages, with what the envelope carries.
struct Frame<'a> {
    key: Option<String>,
    sent_at_us: Option<i64>,
    messages: Vec<Framed<'a>>,
}

/// The top level of a body: an object whose values stay raw text, an array, or else.
enum Top<'a> {
    Obj(Vec<(Cow<'a, str>, &'a RawValue)>),
    Arr(Vec<&'a RawValue>),
    Other,
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            pairs.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(Top::Obj(pairs))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(Top::Arr(items))
    }
    fn visit_unit<E>(self) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
}

fn body_error(code: ErrorCode, message: impl Into<String>) -> BodyError {
    BodyError::new(code, message)
}

fn invalid_json(e: impl fmt::Display) -> BodyError {
    body_error(
        ErrorCode::InvalidJson,
        format!("body is not valid JSON: {e}"),
    )
}

fn elements<'a>(raw: &[&'a RawValue], depth: usize) -> Result<Vec<Framed<'a>>, BodyError> {
    raw.iter()
        .map(|el| {
            let event = json::parse(el.get(), depth).map_err(invalid_json)?;
            Ok(Framed {
                event: Ok(event),
                raw_len: el.get().len(),
            })
        })
        .collect()
}

fn key_in(j: &J, fields: &[&str]) -> Option<String> {
    fields
        .iter()
        .find_map(|f| get(Some(j), &f.split('.').collect::<Vec<_>>())?.as_str())
        .map(str::to_owned)
}

fn frame<'a>(body: &'a [u8], dialect: Dialect, limits: &Limits) -> Result<Frame<'a>, BodyError> {
    if body.len() > limits.max_body_bytes {
        let message = format!("body is over {} bytes", limits.max_body_bytes);
        return Err(body_error(ErrorCode::BodyTooLarge, message));
    }
    if body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        return Err(body_error(ErrorCode::EmptyBody, "body is empty"));
    }
    let text = std::str::from_utf8(body).map_err(invalid_json)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = de.deserialize_any(TopVisitor).map_err(invalid_json)?;
    de.end().map_err(invalid_json)?;
    let fields = dialect.key_fields();
    let shape = match dialect {
        Dialect::SegmentBatch => "a Segment batch is {\"batch\": [...]}",
        Dialect::Segment(_) => "a Segment message is a JSON object",
        Dialect::PostHog => "a PostHog body is an event, {\"batch\": [...]} or [...]",
    };
    let mut frame = Frame {
        key: None,
        sent_at_us: None,
        messages: Vec::new(),
    };
    match top {
        Top::Obj(pairs)
            if matches!(dialect, Dialect::Segment(_))
                || pairs.iter().all(|(k, _)| k != "batch") =>
        {
            if dialect == Dialect::SegmentBatch {
                return Err(body_error(ErrorCode::InvalidShape, shape));
            }
            let message = json::parse(text, 0).map_err(invalid_json)?;
            frame.key = key_in(&message, fields);
            let raw_len = text
                .trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
                .len();
            frame.messages.push(Framed {
                event: Ok(message),
                raw_len,
            });
        }
        Top::Obj(pairs) => {
            let value = |name: &str| -> Result<Option<J<'a>>, BodyError> {
                let mut found = pairs.iter().filter(|(k, _)| k == name);
                let first = found.next().map(|(_, raw)| json::parse(raw.get(), 1));
                if found.next().is_some() {
                    let message = format!("{name:?} appears twice");
                    return Err(body_error(ErrorCode::InvalidShape, message));
                }
                first.transpose().map_err(invalid_json)
            };
            let mut batches = pairs
                .iter()
                .filter(|(k, _)| k == "batch")
                .map(|(_, raw)| *raw);
            let batch = batches.next();
            if batches.next().is_some() {
                return Err(body_error(
                    ErrorCode::InvalidShape,
                    "\"batch\" appears twice",
                ));
            }
            let sent_at_field = if dialect == Dialect::PostHog {
                "sent_at"
            } else {
                "sentAt"
            };
            let sent_at = value(sent_at_field)?;
            let Some(batch) = batch.filter(|raw| raw.get().starts_with('[')) else {
                return Err(body_error(
                    ErrorCode::InvalidShape,
                    "\"batch\" must be an array",
                ));
            };
            let raw: Vec<&RawValue> = serde_json::from_str(batch.get()).map_err(invalid_json)?;
            frame.messages = elements(&raw, 2)?;
            for f in fields {
                frame.key = frame
                    .key
                    .or(value(f)?.as_ref().and_then(J::as_str).map(str::to_owned));
            }
            frame.sent_at_us = match sent_at {
                None | Some(J::Null) => None,
                Some(v) => Some(time::from_json(&v).ok_or_else(|| {
                    let message =
                        format!("{sent_at_field} must be an RFC 3339 string or epoch milliseconds");
                    body_error(ErrorCode::InvalidSentAt, message)
                })?),
            };
        }
        Top::Arr(raw) if dialect == Dialect::PostHog => {
            frame.messages = elements(&raw, 1)?;
            frame.key = frame
                .messages
                .first()
                .and_then(|f| key_in(f.event.as_ref().ok()?, fields));
        }
        _ => return Err(body_error(ErrorCode::InvalidShape, shape)),
    }
    if frame.messages.len() > limits.max_events {
        let message = format!("a batch holds at most {} events", limits.max_events);
        return Err(body_error(ErrorCode::TooManyEvents, message));
    }
    Ok(frame)
}
