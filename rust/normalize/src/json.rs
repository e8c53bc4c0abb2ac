//! A borrowed JSON tree that keeps what `serde_json::Value` throws away.
//!
//! Objects stay a list of pairs in document order, so duplicate keys can be reported
//! instead of silently collapsed, and strings without escapes borrow from the body.
//! Nesting is bounded by an explicit budget, so depth is a rule of ours, not a stack
//! overflow.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The deepest nesting of arrays and objects a document may have (counted from its root).
pub const MAX_DEPTH: usize = 127;

#[derive(Debug, Clone, PartialEq)]
pub enum J<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    Obj(Vec<(Cow<'a, str>, J<'a>)>),
}

impl<'a> J<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one strict JSON document whose root sits `base_depth` levels deep in the body.
pub fn parse<'a>(text: &'a str, base_depth: usize) -> Result<J<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Seed {
        budget: MAX_DEPTH.saturating_sub(base_depth),
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Deserializes a `J`, allowing `budget` more levels of nesting.
#[derive(Clone, Copy)]
pub struct Seed {
    pub budget: usize,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = J<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<J<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed {
    fn nested<E: de::Error>(self) -> Result<Seed, E> {
        match self.budget.checked_sub(1) {
            Some(budget) => Ok(Seed { budget }),
            None => Err(E::custom("nesting too deep")),
        }
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = J<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<J<'de>, E> {
        Ok(J::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<J<'de>, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => J::I64(i),
            Err(_) => J::U64(v),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<J<'de>, E> {
        if v.is_finite() {
            Ok(J::F64(v))
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(J::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        let inner = self.nested()?;
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(inner)?;
            pairs.push((key, value));
        }
        Ok(J::Obj(pairs))
    }
}

/// An object key that borrows from the input when it has no escapes.
pub struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_duplicate_keys_in_order() {
        let j = parse(r#"{"a":1,"a":2.5,"b":"x"}"#, 0).unwrap();
        let J::Obj(pairs) = j else { panic!() };
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0], (Cow::Borrowed("a"), J::I64(1)));
        assert_eq!(pairs[1], (Cow::Borrowed("a"), J::F64(2.5)));
    }

    #[test]
    fn depth_budget_is_exact() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok, 0).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(&deep, 0).is_err());
        assert!(parse(&ok, 2).is_err());
        let very = "[".repeat(100_000);
        assert!(parse(&very, 0).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse("18446744073709551615", 0).unwrap(), J::U64(u64::MAX));
        assert_eq!(parse("-9223372036854775808", 0).unwrap(), J::I64(i64::MIN));
        assert_eq!(
            parse("18446744073709551616", 0).unwrap(),
            J::F64(18446744073709551616.0)
        );
        assert!(parse("1e400", 0).is_err());
        assert!(parse("NaN", 0).is_err());
        assert!(parse(r#""\ud800""#, 0).is_err());
    }
}
