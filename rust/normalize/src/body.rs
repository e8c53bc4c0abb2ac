//! A request body to events: decompression with caps, JSON and NDJSON framing, batch shape.

use crate::error::{BodyError, ErrorCode};
use crate::json::{self, KeySeed, Seed, J, MAX_DEPTH};
use crate::limits::Limits;
use crate::time;
use flate2::read::MultiGzDecoder;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::io::Read;

/// One event as framed from the body: its parse result and the byte length of its text.
pub struct Framed<'a> {
    pub event: Result<J<'a>, String>,
    pub raw_len: usize,
}

pub struct Events<'a> {
    pub events: Vec<Framed<'a>>,
    pub sent_at_us: Option<i64>,
}

fn is_json_ws(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_json_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_json_ws(first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_json_ws(last) {
            break;
        }
        s = rest;
    }
    s
}

/// Undoes `Content-Encoding`, streaming gzip under both the size and the ratio cap.
pub fn decode<'a>(
    body: &'a [u8],
    encoding: Option<&str>,
    limits: &Limits,
) -> Result<Cow<'a, [u8]>, BodyError> {
    let encoding = encoding.unwrap_or("");
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(Cow::Borrowed(body));
    }
    if !encoding.eq_ignore_ascii_case("gzip") {
        return Err(BodyError::new(
            ErrorCode::UnsupportedEncoding,
            format!("content encoding {encoding:?} is not supported; use gzip or identity"),
        ));
    }
    let bomb_cap = limits.max_ratio.saturating_mul(body.len()).max(65_536);
    let cap = limits.max_body_bytes.min(bomb_cap);
    let mut decoder = MultiGzDecoder::new(body);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(cap));
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = decoder.read(&mut chunk).map_err(|e| {
            BodyError::new(ErrorCode::InvalidGzip, format!("gzip body is corrupt: {e}"))
        })?;
        if n == 0 {
            return Ok(Cow::Owned(out));
        }
        out.extend_from_slice(&chunk[..n]);
        if out.len() > cap {
            return Err(if limits.max_body_bytes <= bomb_cap {
                BodyError::new(
                    ErrorCode::BodyTooLarge,
                    format!("decompressed body is over {} bytes", limits.max_body_bytes),
                )
            } else {
                BodyError::new(
                    ErrorCode::DecompressionBomb,
                    format!("gzip body expands more than {}x", limits.max_ratio),
                )
            });
        }
    }
}

fn invalid_json(e: impl fmt::Display) -> BodyError {
    BodyError::new(
        ErrorCode::InvalidJson,
        format!("body is not valid JSON: {e}"),
    )
}

fn invalid_shape(message: &str) -> BodyError {
    BodyError::new(ErrorCode::InvalidShape, message)
}

fn too_many(limits: &Limits) -> BodyError {
    BodyError::new(
        ErrorCode::TooManyEvents,
        format!("a batch holds at most {} events", limits.max_events),
    )
}

/// Frames a decoded body into events (README "Body", steps 2–6).
pub fn frame<'a>(body: &'a [u8], ndjson: bool, limits: &Limits) -> Result<Events<'a>, BodyError> {
    if body.len() > limits.max_body_bytes {
        return Err(BodyError::new(
            ErrorCode::BodyTooLarge,
            format!("body is over {} bytes", limits.max_body_bytes),
        ));
    }
    let trimmed = trim_json_ws(body);
    if trimmed.is_empty() {
        return Err(BodyError::new(ErrorCode::EmptyBody, "body is empty"));
    }
    if ndjson {
        frame_ndjson(body, limits)
    } else {
        let text = std::str::from_utf8(body).map_err(invalid_json)?;
        frame_json(text, trimmed.len(), limits)
    }
}

fn frame_ndjson<'a>(body: &'a [u8], limits: &Limits) -> Result<Events<'a>, BodyError> {
    let mut events = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        let line = trim_json_ws(line);
        if line.is_empty() {
            continue;
        }
        if events.len() == limits.max_events {
            return Err(too_many(limits));
        }
        let event = std::str::from_utf8(line)
            .map_err(|e| e.to_string())
            .and_then(|text| json::parse(text, 0).map_err(|e| e.to_string()));
        events.push(Framed {
            event,
            raw_len: line.len(),
        });
    }
    Ok(Events {
        events,
        sent_at_us: None,
    })
}

/// The top level of a JSON body: an object whose `events` stays raw text, or anything else.
enum Top<'a> {
    Object {
        pairs: Vec<(Cow<'a, str>, J<'a>)>,
        events: Vec<&'a RawValue>,
    },
    Other,
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let inner = Seed {
            budget: MAX_DEPTH - 1,
        };
        let mut pairs = Vec::new();
        let mut events = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key == "events" {
                // Kept raw: each element is parsed on its own, so its exact size is known.
                events.push(map.next_value::<&'de RawValue>()?);
            } else {
                pairs.push((key, map.next_value_seed(inner)?));
            }
        }
        Ok(Top::Object { pairs, events })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'de>, A::Error> {
        let inner = Seed {
            budget: MAX_DEPTH - 1,
        };
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(Top::Other)
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
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Top<'de>, E> {
        if v.is_finite() {
            Ok(Top::Other)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
}

fn frame_json<'a>(
    text: &'a str,
    trimmed_len: usize,
    limits: &Limits,
) -> Result<Events<'a>, BodyError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let top = de.deserialize_any(TopVisitor).map_err(invalid_json)?;
    de.end().map_err(invalid_json)?;
    let Top::Object { pairs, events } = top else {
        return Err(invalid_shape(
            "body must be an event object or {\"events\": [...]}",
        ));
    };
    if events.is_empty() {
        // A single event: the whole body.
        if limits.max_events == 0 {
            return Err(too_many(limits));
        }
        return Ok(Events {
            events: vec![Framed {
                event: Ok(J::Obj(pairs)),
                raw_len: trimmed_len,
            }],
            sent_at_us: None,
        });
    }
    // A JSON body is valid as a whole or not at all: every `events` value is parsed strictly
    // (each array element on its own, so its exact size is known) before any shape check.
    let mut arrays = Vec::with_capacity(1);
    for raw in &events {
        if raw.get().starts_with('[') {
            let elements: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(invalid_json)?;
            let parsed = elements
                .into_iter()
                .map(|el| {
                    // The element sits two levels deep: inside the body object and the array.
                    let event = json::parse(el.get(), 2).map_err(invalid_json)?;
                    Ok(Framed {
                        event: Ok(event),
                        raw_len: el.get().len(),
                    })
                })
                .collect::<Result<Vec<_>, BodyError>>()?;
            arrays.push(Some(parsed));
        } else {
            json::parse(raw.get(), 1).map_err(invalid_json)?;
            arrays.push(None);
        }
    }
    let sent_at: Vec<&J> = pairs
        .iter()
        .filter(|(k, _)| k == "sent_at")
        .map(|(_, v)| v)
        .collect();
    if arrays.len() > 1 {
        return Err(invalid_shape("\"events\" appears twice"));
    }
    if sent_at.len() > 1 {
        return Err(invalid_shape("\"sent_at\" appears twice"));
    }
    let Some(Some(events)) = arrays.pop() else {
        return Err(invalid_shape("\"events\" must be an array"));
    };
    let sent_at_us = match sent_at.first() {
        None | Some(J::Null) => None,
        Some(v) => Some(time::from_json(v).ok_or_else(|| {
            BodyError::new(
                ErrorCode::InvalidSentAt,
                "sent_at must be an RFC 3339 string or epoch milliseconds",
            )
        })?),
    };
    if events.len() > limits.max_events {
        return Err(too_many(limits));
    }
    Ok(Events { events, sent_at_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip member of `{"a":"` + a 3-byte back-reference 32 bytes back (before the start
    /// of the stream) + `"}`, its CRC and size those of the 11 bytes `{"a":"\0\0\0"}`.
    /// miniz_oxide (flate2's default backend) decoded the reference as zeros and accepted
    /// it; zlib and the Python reference refuse it. Found by the fuzz corpus differential.
    const DISTANCE_TOO_FAR_BACK: &[u8] =
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\xab\x56\x4a\x54\xb2\x52\x02\xca\x2b\xd5\x02\
          \x00\xfa\x52\x16\xc2\x0b\x00\x00\x00";

    #[test]
    fn a_back_reference_before_the_stream_is_invalid_gzip() {
        let err = decode(DISTANCE_TOO_FAR_BACK, Some("gzip"), &Limits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidGzip);
    }

    #[test]
    fn a_bomb_of_invalid_back_references_is_invalid_gzip_not_a_bomb() {
        // The first back-reference is already invalid, so nothing is output, however far
        // the rest would expand.
        // A Huffman code goes in most significant bit first; everything else LSB first.
        fn code(bits: &mut Vec<bool>, code: u32, n: u32) {
            bits.extend((0..n).rev().map(|i| code >> i & 1 == 1));
        }
        let mut bits = vec![true, true, false]; // the final block, fixed Huffman codes
        code(&mut bits, 0x30 + u32::from(b'['), 8); // literal '['
        for _ in 0..2000 {
            code(&mut bits, 0b1100_0101, 8); // length code 285: 258 bytes
            code(&mut bits, 9, 5); // distance code 9 (25-32), 3 extra bits follow
            bits.extend([true, true, true]); // extra 7: distance 32
        }
        code(&mut bits, 0, 7); // end of block
        let mut bomb = DISTANCE_TOO_FAR_BACK[..10].to_vec(); // the gzip header
        bomb.extend(bits.chunks(8).map(|byte| {
            byte.iter()
                .enumerate()
                .fold(0u8, |b, (i, &bit)| b | u8::from(bit) << i)
        }));
        bomb.extend_from_slice(&[0; 8]);
        let err = decode(&bomb, Some("gzip"), &Limits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidGzip, "{}", err.message);
    }
}
