//! Free-form JSON documents (node facts, step results) inside binary-encoded types.
//!
//! postcard cannot carry `serde_json::Value` (it needs `deserialize_any`), so [`JsonValue`]
//! encodes as the JSON text in binary formats and as the value itself in human-readable ones.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON value that survives both postcard and JSON encodings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JsonValue(pub serde_json::Value);

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(JsonValue)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text)
                .map(JsonValue)
                .map_err(D::Error::custom)
        }
    }
}

impl utoipa::PartialSchema for JsonValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .description(Some("Any JSON value"))
            .into()
    }
}
impl utoipa::ToSchema for JsonValue {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings() {
        let v = JsonValue(serde_json::json!({"cpus": 2, "disks": [{"size": 10}]}));
        let bin = postcard::to_stdvec(&v).unwrap();
        assert_eq!(postcard::from_bytes::<JsonValue>(&bin).unwrap(), v);
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text, r#"{"cpus":2,"disks":[{"size":10}]}"#);
    }
}
