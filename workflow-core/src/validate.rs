//! Checking JSON input against a workflow's input schema, reporting every
//! violation with its JSON path, in words a person or an AI model can act on.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One way a JSON value breaks a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer to the offending value (`/items/0/qty`; empty for the root).
    pub path: String,
    /// What is wrong, e.g. `"three" is not of type "integer"`.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "at {path}: {}", self.message)
    }
}

/// Joins violations into one line: `at /a: ...; at /b: ...`.
pub(crate) fn describe(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations.iter().map(Violation::to_string).collect();
    parts.join("; ")
}

/// A compiled schema; `None` inside if the schema itself does not compile
/// (then only serde checks the input).
pub(crate) struct SchemaCheck(Option<jsonschema::Validator>);

impl SchemaCheck {
    pub(crate) fn new(schema: &serde_json::Value) -> Self {
        match jsonschema::validator_for(schema) {
            Ok(validator) => SchemaCheck(Some(validator)),
            Err(err) => {
                tracing::warn!(error = %err, "input schema does not compile; checking input with serde only");
                SchemaCheck(None)
            }
        }
    }

    /// Every violation of the schema, then, if there are none, whether serde
    /// accepts it as `T` (the schema cannot say everything serde checks).
    pub(crate) fn check<T: DeserializeOwned>(
        &self,
        value: &serde_json::Value,
    ) -> Result<T, Vec<Violation>> {
        if let Some(validator) = &self.0 {
            let violations: Vec<Violation> = validator
                .iter_errors(value)
                .map(|err| Violation {
                    path: err.instance_path().to_string(),
                    message: err.to_string(),
                })
                .collect();
            if !violations.is_empty() {
                return Err(violations);
            }
        }
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = pointer(err.path());
            vec![Violation {
                path,
                message: err.into_inner().to_string(),
            }]
        })
    }
}

/// A serde path as a JSON pointer.
pub(crate) fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::JsonSchema;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Line {
        sku: String,
        qty: u32,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Order {
        order_id: String,
        lines: Vec<Line>,
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let check = SchemaCheck::new(&crate::schema_for::<Order>());
        let bad =
            serde_json::json!({"order_id": 7, "lines": [{"sku": "a", "qty": -1}, {"qty": "x"}]});
        let violations = check.check::<Order>(&bad).unwrap_err();
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"/order_id"), "{violations:?}");
        assert!(paths.contains(&"/lines/0/qty"), "{violations:?}");
        assert!(paths.contains(&"/lines/1"), "missing sku: {violations:?}");
        assert!(paths.contains(&"/lines/1/qty"), "{violations:?}");
        let text = describe(&violations);
        assert!(
            text.contains(r#"at /order_id: 7 is not of type "string""#),
            "{text}"
        );
        let good = serde_json::json!({"order_id": "o", "lines": [{"sku": "a", "qty": 1}]});
        assert_eq!(check.check::<Order>(&good).unwrap().lines.len(), 1);
    }
}
