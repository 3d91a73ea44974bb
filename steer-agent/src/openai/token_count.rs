//! A request's completion bound (`max_tokens` and kin), read leniently.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A completion bound, read leniently: a value that is not a non-negative
/// whole number counts as absent (the engine judges it).
#[derive(Default)]
pub(super) struct TokenCount(pub(super) Option<u64>);

impl<'de> Deserialize<'de> for TokenCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenCount, E> {
                Ok(TokenCount(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TokenCount, E> {
                Ok(TokenCount(
                    (v >= 0.0 && v.fract() == 0.0).then_some(v as u64),
                ))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TokenCount, E> {
                Ok(TokenCount(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TokenCount, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(TokenCount(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenCount, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(TokenCount(None))
            }
        }
        d.deserialize_any(V)
    }
}
