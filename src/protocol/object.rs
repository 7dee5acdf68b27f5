//! A client's JSON object read once, borrowing from the request: the fields a protocol knows
//! into fixed slots, every other field kept in order, each value as its raw JSON text.
//!
//! What the protocols did before, `BTreeMap<String, &RawValue>`, allocated a string and a
//! tree node per key and compared strings on every lookup; on `/v1/batch` that was a quarter
//! of the request's instructions. Here a key is borrowed unless it has escapes, a known
//! field is one slot read, and only the unknown fields (few, usually none) go into a vector.
//! Duplicate keys keep the last value, as the map did and as most JSON readers do.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

/// An object's fields, against a list of `N` known names.
#[derive(Debug)]
pub struct Object<'a, const N: usize> {
    /// The value of each known name, by its index in the list.
    pub known: [Option<&'a RawValue>; N],
    /// Every other field, in the order first sent.
    pub rest: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Whether a key was sent twice (only the last value is kept).
    pub duplicates: bool,
    /// With [`Object::from_slice_with_items`]: the items of its array field.
    pub items: Option<Vec<&'a RawValue>>,
}

impl<'a, const N: usize> Object<'a, N> {
    /// The object `raw` holds, read against `names`; `None` if `raw` is not an object.
    pub fn parse(raw: &'a RawValue, names: &'static [&'static str; N]) -> Option<Self> {
        if !raw.get().starts_with('{') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        de.deserialize_map(Fields::new(names, None)).ok().flatten()
    }

    /// The object a whole document (a request's body) holds, read against `names`; `None`
    /// if it is not valid JSON or not an object.
    pub fn from_slice(json: &'a [u8], names: &'static [&'static str; N]) -> Option<Self> {
        Self::read(json, Fields::new(names, None))
    }

    /// [`Object::from_slice`], with the known field `array` read as the items of an array
    /// (into [`Object::items`], not its slot) in the same pass; `None` too if it is not an
    /// array. A batch's body is then read once, not once for the batch and again for its
    /// array.
    pub fn from_slice_with_items(
        json: &'a [u8],
        names: &'static [&'static str; N],
        array: usize,
    ) -> Option<Self> {
        Self::read(json, Fields::new(names, Some(array)))
    }

    fn read(json: &'a [u8], fields: Fields<'a, N>) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let object = de.deserialize_map(fields).ok()??;
        de.end().ok()?;
        Some(object)
    }

    /// The known field `i`'s value, if sent.
    pub fn get(&self, i: usize) -> Option<&'a RawValue> {
        self.known[i]
    }

    /// The known field `i`'s value, if sent and not `null`.
    pub fn present(&self, i: usize) -> Option<&'a RawValue> {
        self.known[i].filter(|v| v.get() != "null")
    }
}

/// Reads a map into an [`Object`]; `None` for any other JSON value.
struct Fields<'a, const N: usize> {
    names: &'static [&'static str; N],
    /// The known field read as an array's items, if any.
    array: Option<usize>,
    at: PhantomData<&'a ()>,
}

impl<const N: usize> Fields<'_, N> {
    fn new(names: &'static [&'static str; N], array: Option<usize>) -> Self {
        Fields {
            names,
            array,
            at: PhantomData,
        }
    }
}

impl<'de, const N: usize> Visitor<'de> for Fields<'de, N> {
    type Value = Option<Object<'de, N>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut object = Object {
            known: [None; N],
            rest: Vec::new(),
            duplicates: false,
            items: None,
        };
        while let Some(Key(key)) = map.next_key()? {
            let known = self.names.iter().position(|n| *n == key);
            if known.is_some() && known == self.array {
                object.duplicates |= object.items.is_some();
                object.items = Some(map.next_value()?);
                continue;
            }
            let value: &'de RawValue = map.next_value()?;
            let slot = match known {
                Some(i) => &mut object.known[i],
                None => match object.rest.iter_mut().find(|(k, _)| *k == key) {
                    Some(field) => {
                        field.1 = value;
                        object.duplicates = true;
                        continue;
                    }
                    None => {
                        object.rest.push((key, value));
                        continue;
                    }
                },
            };
            object.duplicates |= slot.is_some();
            *slot = Some(value);
        }
        Ok(Some(object))
    }
}

/// An object key, borrowed from the request unless it has escapes.
pub struct Key<'a>(pub Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The items of the JSON array `raw`, each as raw JSON; `None` if `raw` is not an array.
pub fn items(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// The fields of an object of any keys, in order (duplicates: the last value); `None` if
/// `raw` is not an object.
pub fn fields(raw: &RawValue) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    Object::<0>::parse(raw, &[]).map(|o| o.rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    const NAMES: [&str; 2] = ["a", "b"];

    #[test]
    fn known_fields_into_slots_the_rest_in_order_duplicates_last() {
        let o = Object::parse(
            raw(r#"{"z":1,"b":{"x":[1]},"a\u0041":2,"a":"s","z":3,"b":null}"#),
            &NAMES,
        )
        .unwrap();
        assert_eq!(o.get(0).unwrap().get(), r#""s""#);
        assert_eq!(o.get(1).unwrap().get(), "null");
        assert!(o.present(1).is_none());
        let rest: Vec<(&str, &str)> = o.rest.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(rest, [("z", "3"), ("aA", "2")]);
        assert!(
            matches!(o.rest[1].0, Cow::Owned(_)),
            "an escaped key is decoded"
        );
        assert!(
            matches!(o.rest[0].0, Cow::Borrowed(_)),
            "a plain key is borrowed"
        );
        assert!(o.duplicates);
        let once = Object::parse(raw(r#"{"a":1,"c":2}"#), &NAMES).unwrap();
        assert!(!once.duplicates);
        assert!(Object::from_slice(b" {\"a\":1} ", &NAMES).is_some());
        assert!(Object::from_slice(b"{\"a\":1} x", &NAMES).is_none());
        assert!(Object::from_slice(b"[1]", &NAMES).is_none());
        let batch =
            Object::from_slice_with_items(br#"{"b":[1,{"x":2}],"a":3}"#, &NAMES, 1).unwrap();
        let items: Vec<&str> = batch.items.unwrap().iter().map(|i| i.get()).collect();
        assert_eq!(items, ["1", r#"{"x":2}"#]);
        assert!(batch.known[1].is_none());
        assert!(Object::from_slice_with_items(br#"{"b":{}}"#, &NAMES, 1).is_none());
    }

    #[test]
    fn anything_but_an_object_is_none() {
        for text in ["[]", "1", "\"{\"", "null", "true"] {
            assert!(Object::parse(raw(text), &NAMES).is_none(), "{text}");
        }
        assert_eq!(items(raw("[1, {\"a\":2}]")).unwrap().len(), 2);
        assert!(items(raw("{}")).is_none());
        assert_eq!(fields(raw(r#"{"k":1}"#)).unwrap()[0].0, "k");
    }
}
