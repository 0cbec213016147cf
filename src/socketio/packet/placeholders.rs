//! The binary placeholder scanner: checks that the `{"_placeholder":true,"num":N}` objects in
//! the data of a BINARY_* packet reference each announced attachment, without building the JSON.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::SioError;

/// Checks the binary placeholders of `data` against an attachment count.
///
/// A placeholder is any object, at any depth, whose `_placeholder` member is `true`; the
/// reference replaces it with attachment number `num`. Every placeholder's `num` must be a
/// non-negative integer below `attachments` ([`SioError::BadPlaceholder`] otherwise), and the
/// distinct numbers used must be exactly `attachments` many, so every attachment is referenced
/// ([`SioError::WrongAttachmentCount`] otherwise). The JSON itself is left untouched.
/// [`decode`](fn@super::decode) already runs this for BINARY_* packets; it is public for
/// packets built locally.
pub fn check_placeholders(data: &RawValue, attachments: usize) -> Result<(), SioError> {
    let mut slots = vec![false; attachments];
    scan_placeholders(data.get(), &mut slots)?;
    check_slots(&slots)
}

/// Fails unless every attachment slot was referenced by a placeholder.
fn check_slots(slots: &[bool]) -> Result<(), SioError> {
    let found = slots.iter().filter(|&&seen| seen).count();
    if found == slots.len() {
        Ok(())
    } else {
        Err(SioError::WrongAttachmentCount { expected: slots.len(), found })
    }
}

/// Mutable state of one placeholder scan: the attachment slots placeholders mark, and the
/// error that aborted the scan, if any. The error travels here because serde can only return
/// its own error type through the deserializer.
struct ScanState<'a> {
    slots: &'a mut [bool],
    error: Option<SioError>,
}

/// Walks all of `json` without building anything and marks the slot of every placeholder;
/// a bad placeholder fails the scan. serde_json's recursion limit (128 levels) bounds the
/// nesting, so hostile input cannot exhaust the stack.
fn scan_placeholders(json: &str, slots: &mut [bool]) -> Result<(), SioError> {
    let mut state = ScanState { slots, error: None };
    let mut de = serde_json::Deserializer::from_str(json);
    let result = Scan { state: &mut state }.deserialize(&mut de).and_then(|()| de.end());
    result.map_err(|_| state.error.take().unwrap_or(SioError::Malformed))
}

/// A serde seed that walks one JSON value of any type; see [`scan_placeholders`].
struct Scan<'s, 'a> {
    state: &'s mut ScanState<'a>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.state;
        while seq.next_element_seed(Scan { state: &mut *state })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.state;
        // Later duplicates win, as with JSON.parse.
        let mut is_placeholder = false;
        let mut num = None;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Key::Placeholder => is_placeholder = map.next_value_seed(IsTrue)?,
                Key::Num => num = map.next_value_seed(Index)?,
                Key::Other => map.next_value_seed(Scan { state: &mut *state })?,
            }
        }
        if is_placeholder {
            let slot = num.and_then(|n| usize::try_from(n).ok()).and_then(|n| state.slots.get_mut(n));
            match slot {
                Some(slot) => *slot = true,
                None => {
                    state.error = Some(SioError::BadPlaceholder);
                    return Err(de::Error::custom("invalid placeholder"));
                }
            }
        }
        Ok(())
    }
}

/// The object keys that matter to placeholders.
enum Key {
    Placeholder,
    Num,
    Other,
}

/// Reads an object key into [`Key`] without allocating (escaped keys are unescaped by
/// serde_json first, as `JSON.parse` would).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "_placeholder" => Key::Placeholder,
            "num" => Key::Num,
            _ => Key::Other,
        })
    }
}

/// Reads any value and reports whether it is exactly `true` (the reference tests
/// `_placeholder === true`).
struct IsTrue;

impl<'de> DeserializeSeed<'de> for IsTrue {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IsTrue {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// Reads any value and returns it as an attachment index when it is a non-negative integer
/// (`0`, or `0.0` / `1e0`, which `JSON.parse` turns into the same numbers).
struct Index;

/// Above this a JSON number may not be an exact integer in JavaScript.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

impl<'de> DeserializeSeed<'de> for Index {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<u64>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Index {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u64>, E> {
        Ok(u64::try_from(v).ok())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u64>, E> {
        Ok(Some(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<u64>, E> {
        let integral = (0.0..=MAX_SAFE_INTEGER).contains(&v) && v.fract() == 0.0;
        Ok(integral.then_some(v as u64))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{d, err, PH0, PH1};
    use super::*;

    #[test]
    fn placeholders() {
        // Valid sets, in any key order and nesting.
        d(&format!(r#"51-["x",{PH0}]"#));
        d(r#"51-["x",{"num":0,"_placeholder":true}]"#);
        d(&format!(r#"51-["x",{{"a":[{{"b":{PH0}}}]}}]"#));
        d(&format!(r#"52-["x",{PH1},{PH0}]"#));
        d(r#"51-["x",{"_placeholder":true,"num":0.0}]"#);
        d(r#"51-["x",{"_placeholder":true,"num":0,"extra":"ok"}]"#);
        d(&format!(r#"61-3[{PH0}]"#));
        // Out of range, negative, non-integer, missing or non-numeric numbers.
        assert_eq!(err(&format!(r#"51-["x",{PH1}]"#)), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true,"num":-1}]"#), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true,"num":0.5}]"#), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true}]"#), SioError::BadPlaceholder);
        assert_eq!(err(r#"51-["x",{"_placeholder":true,"num":"0"}]"#), SioError::BadPlaceholder);
        assert_eq!(err(&format!(r#"50-["x",{PH0}]"#)), SioError::BadPlaceholder);
        // Wrong distinct counts.
        assert_eq!(err(&format!(r#"52-["x",{PH0}]"#)), SioError::WrongAttachmentCount { expected: 2, found: 1 });
        assert_eq!(err(&format!(r#"52-["x",{PH0},{PH0}]"#)), SioError::WrongAttachmentCount { expected: 2, found: 1 });
        assert_eq!(err(r#"51-["x"]"#), SioError::WrongAttachmentCount { expected: 1, found: 0 });
        assert_eq!(
            err(r#"51-["x",{"_placeholder":false,"num":0}]"#),
            SioError::WrongAttachmentCount { expected: 1, found: 0 }
        );
        assert_eq!(
            err(r#"51-["x",{"_placeholder":"true","num":0}]"#),
            SioError::WrongAttachmentCount { expected: 1, found: 0 }
        );
        // Placeholder-looking data in non-binary packets are plain data.
        let p = d(r#"2["x",{"_placeholder":true,"num":5}]"#);
        assert_eq!(p.attachments, 0);
        // The public helper.
        let raw = RawValue::from_string(format!(r#"["x",{PH0},{PH1}]"#)).unwrap();
        assert_eq!(check_placeholders(&raw, 2), Ok(()));
        assert_eq!(check_placeholders(&raw, 3), Err(SioError::WrongAttachmentCount { expected: 3, found: 2 }));
        assert_eq!(check_placeholders(&raw, 1), Err(SioError::BadPlaceholder));
        let plain = RawValue::from_string(r#"["x",1]"#.to_string()).unwrap();
        assert_eq!(check_placeholders(&plain, 0), Ok(()));
    }
}
