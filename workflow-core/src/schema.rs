//! JSON Schemas of workflow types, through one generator so every schema the
//! project emits follows the same settings.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;

/// The JSON Schema (draft 2020-12) of `T`, as produced by schemars; doc
/// comments on fields become `description`s.
pub fn schema_for<T: JsonSchema>() -> serde_json::Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Order {
        /// The order to process.
        order_id: String,
        quantity: Option<u32>,
    }

    #[test]
    fn schema_carries_field_docs_and_required() {
        let schema = schema_for::<Order>();
        assert_eq!(schema["type"], "object");
        assert_eq!(
            schema["properties"]["order_id"]["description"],
            "The order to process."
        );
        assert_eq!(schema["required"], serde_json::json!(["order_id"]));
    }
}
