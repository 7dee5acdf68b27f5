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
use serde::de::{self, MapAccess, SeqAccess, Visitor};
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
    /// Where its first field and its last value lie in the text read (see [`Object::text_in`]).
    span: Option<Span>,
}

/// Addresses in the text an object was read from: its first key (when borrowed, i.e. with
/// no escape), its first value, and the end of its last value.
#[derive(Debug, Clone, Copy)]
struct Span {
    key: Option<usize>,
    value: usize,
    end: usize,
}

/// A batch's item read in the batch's own pass: its text as sent, and its fields (`None`:
/// not an object, and then no text either).
pub struct Item<'a, const M: usize> {
    /// The item's JSON text.
    pub text: &'a str,
    /// Its fields.
    pub object: Option<Object<'a, M>>,
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

    /// The object's own text in `json`, the document it was read from by
    /// [`Object::from_slice_with_objects`]: from its `{` to its `}`, found from where its
    /// first key and last value lie (serde gives values, not positions); `None` for an
    /// object with no field, or if `json` is not the text it was read from.
    pub fn text_in(&self, json: &'a [u8]) -> Option<&'a str> {
        let span = self.span?;
        let base = json.as_ptr() as usize;
        let offset = |addr: usize| addr.checked_sub(base).filter(|&o| o <= json.len());
        let back_over_space = |mut i: usize| {
            while i > 0 && json[i - 1].is_ascii_whitespace() {
                i -= 1;
            }
            i
        };
        // The key's opening quote.
        let quote = match span.key {
            Some(key) => offset(key)?.checked_sub(1)?,
            None => {
                // Back from the value over `:` to the key's closing quote, then to the
                // opening quote: the first `"` not escaped (an even run of `\` before it).
                let colon = back_over_space(offset(span.value)?).checked_sub(1)?;
                let mut i = back_over_space(colon).checked_sub(1)?;
                loop {
                    i = i.checked_sub(1)?;
                    let slashes = json[..i].iter().rev().take_while(|&&b| b == b'\\').count();
                    if json[i] == b'"' && slashes % 2 == 0 {
                        break i;
                    }
                }
            }
        };
        let open = back_over_space(quote).checked_sub(1)?;
        let mut close = offset(span.end)?;
        while json.get(close)?.is_ascii_whitespace() {
            close += 1;
        }
        (json[open] == b'{' && json[close] == b'}')
            .then(|| std::str::from_utf8(&json[open..=close]).ok())
            .flatten()
    }

    /// [`Object::from_slice`], with the known field `array` read as an array of objects,
    /// each against `item_names`, with its text ([`Item`]): a batch's body is then read
    /// once, messages and all. `None` also if `array` is not an array.
    pub fn from_slice_with_objects<const M: usize>(
        json: &'a [u8],
        names: &'static [&'static str; N],
        array: usize,
        item_names: &'static [&'static str; M],
    ) -> Option<(Self, Option<Vec<Item<'a, M>>>)> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let batch = de
            .deserialize_map(WithObjects {
                fields: Fields::new(names, None),
                array,
                item_names,
                json,
            })
            .ok()?;
        de.end().ok()?;
        Some(batch)
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
            span: None,
        };
        while let Some(Key(key)) = map.next_key()? {
            let key_at = match &key {
                Cow::Borrowed(k) => Some(k.as_ptr() as usize),
                Cow::Owned(_) => None,
            };
            let known = self.names.iter().position(|n| *n == key);
            if known.is_some() && known == self.array {
                object.duplicates |= object.items.is_some();
                object.items = Some(map.next_value()?);
                continue;
            }
            let value: &'de RawValue = map.next_value()?;
            let (at, len) = (value.get().as_ptr() as usize, value.get().len());
            let span = object.span.get_or_insert(Span {
                key: key_at,
                value: at,
                end: at,
            });
            span.end = at + len;
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

/// Reads a batch: its fields against `fields.names`, the field `array` as [`Item`]s.
struct WithObjects<'a, const N: usize, const M: usize> {
    fields: Fields<'a, N>,
    array: usize,
    item_names: &'static [&'static str; M],
    json: &'a [u8],
}

impl<'de, const N: usize, const M: usize> Visitor<'de> for WithObjects<'de, N, M> {
    type Value = (Object<'de, N>, Option<Vec<Item<'de, M>>>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let mut items = None;
        let array = self.fields.names[self.array];
        let (item_names, json) = (self.item_names, self.json);
        let object = self
            .fields
            .visit_map(Intercept {
                map,
                array,
                items: &mut items,
                seed: Items { item_names, json },
            })?
            .expect("a map");
        Ok((object, items))
    }
}

/// A map whose field `array` is taken aside (read by `seed` into `items`) before the object
/// visitor sees the rest.
struct Intercept<'i, 'de, A, const M: usize> {
    map: A,
    array: &'static str,
    items: &'i mut Option<Vec<Item<'de, M>>>,
    seed: Items<'de, M>,
}

impl<'de, A: MapAccess<'de>, const M: usize> MapAccess<'de> for Intercept<'_, 'de, A, M> {
    type Error = A::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(Key(key)) = self.map.next_key()? else {
                return Ok(None);
            };
            if key == self.array {
                *self.items = Some(self.map.next_value_seed(self.seed)?);
                continue;
            }
            return match key {
                Cow::Borrowed(k) => seed.deserialize(de::value::BorrowedStrDeserializer::new(k)),
                Cow::Owned(k) => seed.deserialize(de::value::StringDeserializer::new(k)),
            }
            .map(Some);
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// The items of a batch's array, each an [`Item`].
#[derive(Clone, Copy)]
struct Items<'a, const M: usize> {
    item_names: &'static [&'static str; M],
    json: &'a [u8],
}

impl<'de, const M: usize> de::DeserializeSeed<'de> for Items<'de, M> {
    type Value = Vec<Item<'de, M>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, const M: usize> Visitor<'de> for Items<'de, M> {
    type Value = Vec<Item<'de, M>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(ItemSeed(self))? {
            items.push(item);
        }
        Ok(items)
    }
}

/// One item of a batch's array: an object with its text, or any other value (skipped).
struct ItemSeed<'a, const M: usize>(Items<'a, M>);

impl<'de, const M: usize> de::DeserializeSeed<'de> for ItemSeed<'de, M> {
    type Value = Item<'de, M>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let Items { item_names, json } = self.0;
        let any = d.deserialize_any(AnyObject(Fields::new(item_names, None)))?;
        Ok(match any {
            Some(object) => Item {
                text: object.text_in(json).unwrap_or("{}"),
                object: Some(object),
            },
            None => Item {
                text: "",
                object: None,
            },
        })
    }
}

/// [`Fields`] for any JSON value: an object's fields, `None` for anything else.
struct AnyObject<'a, const N: usize>(Fields<'a, N>);

impl<'de, const N: usize> Visitor<'de> for AnyObject<'de, N> {
    type Value = Option<Object<'de, N>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map)
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
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
    fn a_batch_read_in_one_pass_gives_each_item_its_exact_text() {
        const TOP: [&str; 2] = ["b", "s"];
        for array in [
            r#"[{"a":1},{"b":[1,{"c":"}"}]}]"#,
            "[ {\n \"a\" : \"x\" , \"z\":{} \r\n} ,\t{\"a\":null}]",
            r#"[{"k\"\\":1,"a":2}, {"\u0061":"v"}, {"x\\\"y":[]}]"#,
            r#"[{}, 1, "s", null, [1,2], {"a":{"b":{"c":[{}]}}}]"#,
            "[]",
        ] {
            let body = format!(r#"{{"s":1, "b": {array}, "t":true}}"#);
            let (top, items) =
                Object::from_slice_with_objects(body.as_bytes(), &TOP, 0, &NAMES).unwrap();
            assert_eq!(top.get(1).unwrap().get(), "1");
            assert_eq!(top.rest.len(), 1, "{body}");
            let items = items.unwrap();
            let raw: Vec<&RawValue> = serde_json::from_str(array).unwrap();
            assert_eq!(items.len(), raw.len(), "{array}");
            for (item, raw) in items.iter().zip(&raw) {
                match &item.object {
                    Some(o) if !o.rest.is_empty() || o.known.iter().any(Option::is_some) => {
                        assert_eq!(item.text, raw.get(), "{array}")
                    }
                    Some(_) => assert_eq!(item.text, "{}"),
                    None => assert!(!raw.get().starts_with('{'), "{array}"),
                }
            }
        }
        assert!(Object::from_slice_with_objects(br#"{"b":{}}"#, &NAMES, 1, &NAMES).is_none());
        assert!(Object::from_slice_with_objects(br#"{"b":[1}"#, &NAMES, 1, &NAMES).is_none());
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
