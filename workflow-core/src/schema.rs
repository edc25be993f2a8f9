//! JSON Schemas of workflow types, through one generator so every schema the
//! project emits follows the same settings.

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::{JsonSchema, Schema};

/// The JSON Schema (draft 2020-12) of `T`, as produced by schemars; doc
/// comments on fields become `description`s, and integers carry their
/// type's range (`minimum`/`maximum`).
pub fn schema_for<T: JsonSchema>() -> serde_json::Value {
    let generator = SchemaSettings::draft2020_12()
        .with_transform(RecursiveTransform(integer_bounds))
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// Adds `minimum` and `maximum` to an integer whose `format` names a Rust
/// type (`uint32`, `int64`...). schemars gives only the format (and 0 as
/// the minimum of unsigned ones), which validators do not check by
/// default: `{"qty": 4294967296}` for a `u32` passed validation, and only
/// the worker, decoding the input, found it out of range (for a start
/// from a process without the workflow's code, after it was accepted). The
/// bounds also tell an AI model the range; strict tool schemas keep them.
fn integer_bounds(schema: &mut Schema) {
    use serde_json::Value;
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let (min, max): (Value, Value) = match object.get("format").and_then(Value::as_str) {
        Some("int8") => (i8::MIN.into(), i8::MAX.into()),
        Some("int16") => (i16::MIN.into(), i16::MAX.into()),
        Some("int32") => (i32::MIN.into(), i32::MAX.into()),
        Some("int64" | "int") => (i64::MIN.into(), i64::MAX.into()),
        Some("uint8") => (0.into(), u8::MAX.into()),
        Some("uint16") => (0.into(), u16::MAX.into()),
        Some("uint32") => (0.into(), u32::MAX.into()),
        Some("uint64" | "uint") => (0.into(), u64::MAX.into()),
        // An `f32` past its range is read as infinity, which JSON cannot
        // hold: stored, it came back as `null` and paused the instance.
        // As serde_json writes `f32::MAX` (its shortest decimal, a little
        // above the exact value), which serde reads back as `f32::MAX`.
        Some("float") => ((-3.4028235e38_f64).into(), 3.4028235e38_f64.into()),
        _ => return,
    };
    object.entry("minimum").or_insert(min);
    object.entry("maximum").or_insert(max);
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

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Sizes {
        small: u8,
        count: u32,
        delta: i64,
        nested: Vec<Option<i16>>,
        #[schemars(range(max = 10))]
        capped: u32,
        ratio: f32,
    }

    /// Integers carry their Rust type's range, wherever they sit, and a
    /// range of the type's own (`#[schemars(range)]`) wins.
    #[test]
    fn integers_carry_their_range() {
        let schema = schema_for::<Sizes>();
        let p = &schema["properties"];
        assert_eq!(
            (&p["small"]["minimum"], &p["small"]["maximum"]),
            (&0.into(), &255.into())
        );
        assert_eq!(p["count"]["maximum"], u32::MAX);
        assert_eq!(p["delta"]["minimum"], i64::MIN);
        let inner = &p["nested"]["items"];
        assert_eq!(inner["maximum"], i16::MAX, "{inner}");
        assert_eq!(p["capped"]["maximum"], 10);
        let validator = jsonschema::validator_for(&schema).unwrap();
        let input = |count: u64, ratio: f64| {
            serde_json::json!({
                "small": 1, "count": count, "delta": 0, "nested": [], "capped": 1, "ratio": ratio
            })
        };
        assert!(validator.is_valid(&input(1, 0.5)));
        assert!(
            !validator.is_valid(&input(4_294_967_296, 0.5)),
            "u32::MAX + 1 is refused"
        );
        // Past f32's range it would be read as infinity, which JSON cannot hold.
        assert!(
            !validator.is_valid(&input(1, 1e39)),
            "f32 overflow is refused"
        );
        assert!(validator.is_valid(&input(1, -3.0e38)));
        // f32's largest values, as serde_json writes them, are in range.
        for max in [f32::MAX, -f32::MAX] {
            let written: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&max).unwrap()).unwrap();
            let value = input(1, written.as_f64().unwrap());
            assert!(validator.is_valid(&value), "{value}");
        }
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
