//! Request bodies and the values inside them that the protocol defines as JSON
//! objects must be JSON objects.
//!
//! serde's derived `Deserialize` of a struct also takes a JSON array, its fields in
//! declaration order: `[null, null, 1]` would be a [`crate::PullRequest`] with
//! `limit: 1`. [`JsonObject`] takes a value only from a JSON object; a request's
//! top level is read through it, and [`json_objects`] does the same for a list of
//! structs inside a request (a push's mutations).

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A `T` read only from a JSON object: any other JSON value is an "invalid type"
/// error (a data error, not a syntax error).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonObject<T>(pub T);

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(JsonObject)
    }
}

/// `deserialize_with` for a `Vec` of structs: a JSON array whose every item is a
/// JSON object.
pub fn json_objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array of objects")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // The size hint comes from the input: never trust it for an allocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(JsonObject(item)) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(ListVisitor(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Op, PullRequest, PushRequest};

    #[test]
    fn a_struct_is_read_from_an_object_only() {
        let JsonObject(req) =
            serde_json::from_value::<JsonObject<PullRequest>>(json!({"limit": 1})).unwrap();
        assert_eq!(req.limit, Some(1));
        for not_an_object in [json!([null, null, 1]), json!(1), json!("x"), json!(null)] {
            let err = serde_json::from_value::<JsonObject<PullRequest>>(not_an_object.clone())
                .unwrap_err();
            assert!(err.to_string().contains("expected a JSON object"), "{err}");
        }
        // Without the wrapper serde takes the array (what the wrapper is for).
        let plain: PullRequest = serde_json::from_value(json!([null, null, 1])).unwrap();
        assert_eq!(plain.limit, Some(1));
    }

    #[test]
    fn a_push_takes_its_mutations_as_objects_only() {
        let ok: PushRequest = serde_json::from_value(json!({"client_id": "c", "mutations": [
            {"mutation_id": "m1", "collection": "tasks", "record_id": "t1", "op": "create"}
        ]}))
        .unwrap();
        assert_eq!(ok.mutations[0].op, Op::Create);
        let err = serde_json::from_value::<PushRequest>(json!({"client_id": "c", "mutations": [
            ["m1", "tasks", "t1", "create", {}]
        ]}))
        .unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
        let str_err = serde_json::from_str::<PushRequest>(
            r#"{"client_id": "c", "mutations": [["m1", "tasks", "t1", "create", {}]]}"#,
        )
        .unwrap_err();
        assert!(
            str_err.is_data(),
            "a shape error, not a syntax error: {str_err}"
        );
    }
}
