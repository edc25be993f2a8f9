//! Checking JSON input against a workflow's input schema, reporting every
//! violation with its JSON path, in words a person or an AI model can act on.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One way a JSON value breaks a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Violation {
    /// JSON pointer to the offending value (`/items/0/qty`; empty for the
    /// root; for a missing field, the object that lacks it).
    pub path: String,
    /// The rule it breaks, for code to act on: the JSON Schema keyword
    /// (`type`, `required`, `minimum`, `maxLength`, `enum`, `const`,
    /// `oneOf`, `unevaluatedProperties` for a field an input's type does
    /// not have, `additionalProperties` for one a tool's arguments do not
    /// have...), `deserialize` for a value the schema allows but the
    /// type's own deserializer refuses, or `schema` for any value when the
    /// only schema that could check it (one recorded by another engine)
    /// does not compile.
    #[serde(default)]
    pub rule: String,
    /// What is wrong, e.g. `"three" is not of type "integer"`.
    pub message: String,
}

impl Violation {
    /// A violation of `rule` at `path`.
    pub fn new(
        path: impl Into<String>,
        rule: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Violation {
            path: path.into(),
            rule: rule.into(),
            message: message.into(),
        }
    }
}

/// The rule of a value the schema allowed but the type refused.
pub(crate) const DESERIALIZE: &str = "deserialize";

/// The rule of any value, when the only schema that could check it does
/// not compile.
const SCHEMA: &str = "schema";

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

/// A compiled schema, or what is to be done with input when the schema
/// itself does not compile.
pub(crate) struct SchemaCheck(Compiled);

enum Compiled {
    Schema(jsonschema::Validator, serde_json::Value),
    /// The workflow's type is here: serde alone checks the input.
    TypeOnly,
    /// Only the schema could check the input: every input is refused
    /// rather than stored for a worker that may not read it.
    Broken(String),
}

impl SchemaCheck {
    pub(crate) fn new(schema: &serde_json::Value) -> Self {
        Self::build(schema, false)
    }

    /// The check of a schema an engine recorded, for a workflow whose type
    /// is not here to decode the input: `format`s are asserted too (a
    /// `date-time`, a `uuid`), since nothing else would refuse "tomorrow"
    /// for a timestamp before a worker fails to decode it. Where the type
    /// is here, serde decides formats (chrono takes more spellings than
    /// RFC 3339, uuid more than the hyphenated one), so [`new`](Self::new)
    /// leaves them to it.
    pub(crate) fn recorded(schema: &serde_json::Value) -> Self {
        Self::build(schema, true)
    }

    fn build(schema: &serde_json::Value, recorded: bool) -> Self {
        // Checked closed: serde drops a field it does not know, so a
        // misspelt optional field (`nte` for `note`) would start the
        // workflow without it, and say nothing.
        let schema = closed(schema);
        let options = jsonschema::options()
            .should_validate_formats(recorded)
            .with_keyword(WHOLE_NUMBER, |_, _, _| {
                Ok(Box::new(WholeNumber) as Box<dyn for<'i> jsonschema::Keyword<'i>>)
            });
        match options.build(&schema) {
            Ok(validator) => SchemaCheck(Compiled::Schema(validator, schema)),
            Err(err) if recorded => {
                tracing::warn!(error = %err, "recorded input schema does not compile; refusing input it cannot check");
                SchemaCheck(Compiled::Broken(err.to_string()))
            }
            Err(err) => {
                tracing::warn!(error = %err, "input schema does not compile; checking input with serde only");
                SchemaCheck(Compiled::TypeOnly)
            }
        }
    }

    /// Every violation of the schema, then, if there are none, whether serde
    /// accepts it as `T` (the schema cannot say everything serde checks).
    pub(crate) fn check<T: DeserializeOwned>(
        &self,
        value: &serde_json::Value,
    ) -> Result<T, Vec<Violation>> {
        if let Compiled::Broken(error) = &self.0 {
            return Err(vec![Violation::new(
                String::new(),
                SCHEMA,
                format!(
                    "the input schema recorded for this workflow does not compile ({error}), \
                     so nothing here can check the input: start it from a process that registers the workflow"
                ),
            )]);
        }
        if let Compiled::Schema(validator, schema) = &self.0 {
            use jsonschema::error::ValidationErrorKind as Kind;
            let errors: Vec<_> = validator.iter_errors(value).collect();
            // An object that fits none of its alternatives (an enum's
            // variants, flattened or not) has the fields of the one it was
            // meant for counted as unevaluated: "unknown field" for them
            // would tell the caller to delete fields the type has (the
            // alternatives' own explanation says what is wrong). The
            // names no alternative declares are still unknown.
            let mut declared: HashMap<String, HashSet<String>> = HashMap::new();
            for err in &errors {
                if matches!(err.kind(), Kind::OneOfNotValid { .. } | Kind::AnyOf { .. }) {
                    let names = declared.entry(err.instance_path().to_string()).or_default();
                    if let Some(node) = schema.pointer(err.schema_path().as_str()) {
                        declared_names(schema, node, names, 0);
                    }
                }
            }
            let mut violations = Vec::new();
            for err in &errors {
                let path = err.instance_path().to_string();
                match (err.kind(), declared.get(&path)) {
                    (Kind::UnevaluatedProperties { unexpected }, Some(names)) => {
                        violations.extend(
                            unexpected
                                .iter()
                                .filter(|name| !names.contains(*name))
                                .map(|name| unknown_field(&path, name, err.kind().keyword())),
                        );
                    }
                    _ => violations.extend(explain(err)),
                }
            }
            if !violations.is_empty() {
                return Err(violations);
            }
        }
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = pointer(err.path());
            vec![Violation::new(
                path,
                DESERIALIZE,
                err.into_inner().to_string(),
            )]
        })
    }
}

/// Whether `json`, what a checked value's type wrote, reads back as that
/// type: one whose type writes other JSON than it reads (a field it reads
/// but skips writing, a custom `Serialize`) fails here, and would otherwise
/// be stored where no run can read it.
pub(crate) fn reads_back<T: DeserializeOwned>(json: &str) -> Result<(), Vec<Violation>> {
    crate::workflow::read_at::<T>(json)
        .map(drop)
        .map_err(|(path, error)| {
            vec![Violation::new(
                pointer(&path),
                DESERIALIZE,
                format!("the value does not read back once written as JSON: {error}"),
            )]
        })
}

/// The keyword [`closed`] puts beside `"type": "integer"`: JSON Schema
/// counts `2.0` as an integer, serde's integer types refuse it (a start
/// from a process without the workflow's code would store it, and the
/// worker would pause the instance when it could not read it).
const WHOLE_NUMBER: &str = "x-wholeNumber";

/// Refuses a number written with a fraction or an exponent.
struct WholeNumber;

impl<'i> jsonschema::Keyword<'i> for WholeNumber {
    fn validate(
        &self,
        instance: &'i serde_json::Value,
    ) -> Result<(), jsonschema::ValidationError<'i>> {
        if self.is_valid(instance) {
            return Ok(());
        }
        // Whole digits past u64 and i64 are read as a float too: not a
        // fraction or an exponent the sender wrote, but a number too large.
        // [i64::MIN, u64::MAX + 1): every integer some 64-bit type holds.
        let held = -9_223_372_036_854_775_808.0..18_446_744_073_709_551_616.0;
        let whole = instance
            .as_f64()
            .is_some_and(|f| f.fract() == 0.0 && !held.contains(&f));
        Err(jsonschema::ValidationError::custom(if whole {
            format!(
                "{instance} is outside the 64-bit integers ({} to {})",
                i64::MIN,
                u64::MAX
            )
        } else {
            format!(
                "{instance} is not an integer as written: write it without a fraction or an \
                 exponent"
            )
        }))
    }

    fn is_valid(&self, instance: &'i serde_json::Value) -> bool {
        !matches!(instance, serde_json::Value::Number(n) if n.is_f64())
    }
}

/// `schema` with every object that lists its properties closed to others
/// (`unevaluatedProperties: false`, which sees the properties its `allOf`,
/// `oneOf`, `anyOf` and `$ref` parts name), unless it says what others may
/// be (`additionalProperties`: a map, or a type that opts out with
/// `#[schemars(extend("additionalProperties" = true))]`).
///
/// Not the parts joined to another object's own properties: those of an
/// `allOf`, those of a `oneOf`/`anyOf` beside `properties`, a `$ref` beside
/// `properties` (a `#[serde(flatten)]` struct or enum, a struct in a
/// tagged enum's variant), and everything inside such a part's own
/// `oneOf`/`anyOf`/`allOf`/`$ref`. Closed on their own, they would refuse
/// the fields of the object they are joined to.
fn closed(schema: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;

    const PARTS: [&str; 3] = ["allOf", "oneOf", "anyOf"];

    /// Keywords that evaluate an object's properties beside its parts.
    const EVALUATING: [&str; 4] = [
        "properties",
        "patternProperties",
        "additionalProperties",
        "unevaluatedProperties",
    ];
    /// Subschemas that apply to the same object as the one holding them.
    const SAME_OBJECT: [&str; 4] = ["if", "then", "else", "not"];

    /// Walks `v`; `joined`: whether it is a part joined to an object's
    /// properties. Collects the definitions that are joined parts in
    /// `refs`, and closes the rest when `close` is set.
    fn walk(v: &mut Value, path: &str, joined: bool, refs: &mut HashSet<String>, close: bool) {
        let joined = joined || refs.contains(path);
        match v {
            Value::Object(map) => {
                let has_properties = map.contains_key("properties");
                // The parts of a combinator add to this object's
                // properties when it evaluates others beside them (its
                // own, a map's, another combinator's or reference's), or
                // when it is itself joined to another object.
                let evaluating = EVALUATING.iter().any(|k| map.contains_key(*k));
                let parts_here = PARTS.iter().filter(|k| map.contains_key(**k)).count()
                    + usize::from(map.contains_key("$ref"));
                let shared = joined || evaluating || parts_here > 1;
                if let Some(Value::String(r)) = map.get("$ref") {
                    if shared {
                        refs.insert(target(r));
                    }
                }
                let open = map.contains_key("additionalProperties")
                    || map.contains_key("unevaluatedProperties");
                if close && has_properties && !open && !joined {
                    map.insert("unevaluatedProperties".to_owned(), Value::Bool(false));
                }
                let integer = match map.get("type") {
                    Some(Value::String(t)) => t == "integer",
                    Some(Value::Array(ts)) => {
                        ts.iter().any(|t| t == "integer") && !ts.iter().any(|t| t == "number")
                    }
                    _ => false,
                };
                if close && integer {
                    map.insert(WHOLE_NUMBER.to_owned(), Value::Bool(true));
                }
                // A definition that is joined somewhere stays open there,
                // so where it is used on its own (a field of its type) it
                // is closed at the use: `unevaluatedProperties` sees the
                // properties the `$ref` evaluated.
                let lone_use = map
                    .get("$ref")
                    .and_then(Value::as_str)
                    .is_some_and(|r| refs.contains(&target(r)));
                if close && lone_use && !has_properties && !open && !joined && !shared {
                    map.insert("unevaluatedProperties".to_owned(), Value::Bool(false));
                }
                for (key, child) in map.iter_mut() {
                    let here = format!("{path}/{}", pointer_token(key));
                    let combinator = PARTS.contains(&key.as_str());
                    let part_joined = combinator && (shared || key == "allOf");
                    match child {
                        Value::Array(items) if combinator => {
                            for (n, part) in items.iter_mut().enumerate() {
                                if part_joined {
                                    if let Some(Value::String(r)) = part.get("$ref") {
                                        refs.insert(target(r));
                                    }
                                }
                                walk(part, &format!("{here}/{n}"), part_joined, refs, close);
                            }
                        }
                        // Applied to this same object: never closed alone.
                        child if SAME_OBJECT.contains(&key.as_str()) => {
                            walk(child, &here, true, refs, close)
                        }
                        Value::Object(subschemas) if key == "dependentSchemas" => {
                            for (name, sub) in subschemas.iter_mut() {
                                walk(sub, &format!("{here}/{name}"), true, refs, close);
                            }
                        }
                        child => walk(child, &here, false, refs, close),
                    }
                }
            }
            Value::Array(items) => {
                for (n, item) in items.iter_mut().enumerate() {
                    walk(item, &format!("{path}/{n}"), false, refs, close);
                }
            }
            _ => {}
        }
    }

    let mut schema = schema.clone();
    // Which definitions are joined parts: a definition reached through a
    // joined part's `$ref` joins in turn, so look until nothing is added.
    let mut refs = HashSet::new();
    loop {
        let before = refs.len();
        walk(&mut schema, "#", false, &mut refs, false);
        if refs.len() == before {
            break;
        }
    }
    walk(&mut schema, "#", false, &mut refs, true);
    schema
}

/// A violation in words. A value that fits none of the alternatives of a
/// `oneOf`/`anyOf` (a Rust enum, an `Option` of a struct) is explained by
/// the alternative it was meant for (the one whose tag it carries, or that
/// it got furthest into) rather than as "not valid under any of the
/// schemas"; one that matches no tag, or none of the values of an enum's
/// unit variants, is told the tags or values.
fn explain(err: &jsonschema::ValidationError<'_>) -> Vec<Violation> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let path = err.instance_path().to_string();
    let as_is = || {
        // Ours is the `type` rule, as JSON ought to have it.
        let rule = match err.kind().keyword() {
            WHOLE_NUMBER => "type",
            rule => rule,
        };
        vec![Violation::new(path.clone(), rule, err.to_string())]
    };
    let branches = match err.kind() {
        Kind::OneOfNotValid { context } | Kind::AnyOf { context } => context,
        // A field the type does not have: named at its own path. Inputs'
        // schemas are closed with `unevaluatedProperties`, tools' with
        // `additionalProperties`; the rule says which.
        Kind::UnevaluatedProperties { unexpected } | Kind::AdditionalProperties { unexpected } => {
            return unexpected
                .iter()
                .map(|name| unknown_field(&path, name, err.kind().keyword()))
                .collect();
        }
        _ => return as_is(),
    };
    let depth = |p: &str| p.matches('/').count();
    let here = depth(&path);
    let at = |e: &jsonschema::ValidationError<'_>| depth(&e.instance_path().to_string());
    let value_check = |e: &jsonschema::ValidationError<'_>| {
        matches!(e.kind(), Kind::Constant { .. } | Kind::Enum { .. })
    };
    // The value is not meant for an alternative whose tag (a `const` or
    // `enum` one level down) is not the value's, nor for a unit variant's
    // (a `const` or `enum` on the value itself: schemars gives each
    // variant with a doc comment its own `const` alternative) it is not.
    let missed = |e: &jsonschema::ValidationError<'_>| {
        value_check(e) && (at(e) == here + 1 || at(e) == here)
    };
    // Only the value's kind is wrong (a string for a struct variant): it
    // tells less than an alternative that got into the value.
    let kind_only = |b: &Vec<jsonschema::ValidationError<'_>>| {
        !b.is_empty()
            && b.iter()
                .all(|e| matches!(e.kind(), Kind::Type { .. }) && at(e) == here)
    };
    let meant: Vec<_> = branches
        .iter()
        .filter(|b| !b.is_empty() && !b.iter().any(missed))
        .collect();
    if meant.iter().all(|b| kind_only(b)) {
        // Every tag or unit value missed, the other alternatives of
        // another kind: which tags or values there are.
        let misses: Option<Vec<_>> = branches
            .iter()
            .filter(|b| !kind_only(b))
            .map(|b| b.iter().find(|e| missed(e)))
            .collect();
        if let Some(told) = misses.as_deref().and_then(tags_missed) {
            return told;
        }
        if meant.is_empty() {
            return as_is();
        }
    }
    let into_value: Vec<_> = meant.iter().copied().filter(|b| !kind_only(b)).collect();
    let meant = if into_value.is_empty() {
        meant
    } else {
        into_value
    };
    // Furthest into the value, then fewest errors; a tie explains nothing.
    let score = |b: &Vec<jsonschema::ValidationError<'_>>| {
        let furthest = b.iter().map(at).max().unwrap_or(0);
        (furthest, std::cmp::Reverse(b.len()))
    };
    let Some(&best) = meant.iter().max_by_key(|b| score(b)) else {
        return as_is();
    };
    if meant.iter().filter(|b| score(b) == score(best)).count() > 1 {
        return as_is();
    }
    best.iter().flat_map(|e| explain(e)).collect()
}

/// A `$ref` as the path of what it points at (schemars percent-encodes
/// names outside the URL fragment set: `create%20args`).
fn target(r: &str) -> String {
    percent_encoding::percent_decode_str(r)
        .decode_utf8_lossy()
        .into_owned()
}

/// A field named `name` that the object at `path` does not have.
fn unknown_field(path: &str, name: &str, rule: &str) -> Violation {
    Violation::new(
        format!("{path}/{}", pointer_token(name)),
        rule,
        "unknown field: the schema has no field of this name",
    )
}

/// The property names the alternatives at `node` (a `oneOf`/`anyOf` list,
/// or one alternative) declare, through `$ref`s and nested alternatives.
fn declared_names(
    root: &serde_json::Value,
    node: &serde_json::Value,
    names: &mut HashSet<String>,
    depth: u32,
) {
    use serde_json::Value;
    if depth > 16 {
        return;
    }
    match node {
        Value::Array(parts) => {
            for part in parts {
                declared_names(root, part, names, depth + 1);
            }
        }
        Value::Object(map) => {
            if let Some(props) = map.get("properties").and_then(Value::as_object) {
                names.extend(props.keys().cloned());
            }
            if let Some(node) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|p| root.pointer(&target(p)))
            {
                declared_names(root, node, names, depth + 1);
            }
            for key in ["allOf", "anyOf", "oneOf"] {
                if let Some(parts) = map.get(key) {
                    declared_names(root, parts, names, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// Tags or unit values missed, all at one path: which ones there are.
fn tags_missed(misses: &[&jsonschema::ValidationError<'_>]) -> Option<Vec<Violation>> {
    use jsonschema::error::ValidationErrorKind as Kind;
    let first = misses.first()?;
    let path = first.instance_path().to_string();
    let mut tags = Vec::new();
    for miss in misses {
        if miss.instance_path().to_string() != path {
            return None;
        }
        match miss.kind() {
            Kind::Constant { expected_value } => tags.push(expected_value.to_string()),
            Kind::Enum { options } => tags.extend(
                options
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(ToString::to_string),
            ),
            _ => return None,
        }
    }
    Some(vec![Violation::new(
        path,
        first.kind().keyword(),
        format!("{} is not one of {}", first.instance(), tags.join(" or ")),
    )])
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
                out.push_str(&pointer_token(key))
            }
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

/// `key` as one token of a JSON pointer (RFC 6901: `~` and `/` escaped).
pub(crate) fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
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

    /// A timestamp and an id as chrono and uuid describe them (schemars'
    /// `chrono04`/`uuid1` features).
    fn reminder_schema() -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "due": {"type": "string", "format": "date-time"},
                "user": {"type": "string", "format": "uuid"},
                "count": {"type": "integer", "format": "uint32", "minimum": 0}
            },
            "required": ["due", "user", "count"]
        })
    }

    #[test]
    fn a_recorded_schema_asserts_formats_and_a_typed_one_leaves_them_to_serde() {
        let bad = serde_json::json!({"due": "tomorrow", "user": "bob", "count": 1});
        let recorded = SchemaCheck::recorded(&reminder_schema());
        let violations = recorded.check::<serde_json::Value>(&bad).unwrap_err();
        let found: Vec<(&str, &str)> = violations
            .iter()
            .map(|v| (v.path.as_str(), v.rule.as_str()))
            .collect();
        assert_eq!(
            found,
            [("/due", "format"), ("/user", "format")],
            "{violations:?}"
        );
        assert!(
            violations[0].message.contains("date-time"),
            "{violations:?}"
        );
        // A format the validator does not know (schemars' `uint32`) is
        // not a reason to refuse.
        let good = serde_json::json!({
            "due": "2026-12-07T09:00:00Z",
            "user": "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "count": 3
        });
        assert_eq!(recorded.check::<serde_json::Value>(&good).unwrap(), good);
        // With the type here, serde judges the spelling.
        let typed = SchemaCheck::new(&reminder_schema());
        assert!(typed.check::<serde_json::Value>(&bad).is_ok());
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
        // Each names its rule, for code to act on.
        let rule = |path: &str, message: &str| {
            violations
                .iter()
                .find(|v| v.path == path && v.message.contains(message))
                .map(|v| v.rule.as_str())
        };
        assert_eq!(rule("/order_id", "type"), Some("type"), "{violations:?}");
        assert_eq!(
            rule("/lines/0/qty", "minimum"),
            Some("minimum"),
            "{violations:?}"
        );
        assert_eq!(rule("/lines/1", "sku"), Some("required"), "{violations:?}");
        let good = serde_json::json!({"order_id": "o", "lines": [{"sku": "a", "qty": 1}]});
        assert_eq!(check.check::<Order>(&good).unwrap().lines.len(), 1);
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Audit {
        by: String,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Flattened {
        id: String,
        #[serde(flatten)]
        audit: Audit,
        labels: std::collections::BTreeMap<String, String>,
        line: Option<Line>,
        note: Option<String>,
    }

    /// A field the type does not have is named, wherever it is; what
    /// serde takes (flattened fields, map keys) is not refused.
    #[test]
    fn unknown_fields_are_named_not_dropped() {
        let check = SchemaCheck::new(&crate::schema_for::<Flattened>());
        let ok = serde_json::json!({"id": "a", "by": "ada", "labels": {"any": "x"}, "line": {"sku": "s", "qty": 1}});
        assert!(
            check.check::<Flattened>(&ok).is_ok(),
            "{:?}",
            check.check::<Flattened>(&ok).err()
        );
        let typo = serde_json::json!({"id": "a", "by": "ada", "labels": {}, "nte": "gift", "line": {"sku": "s", "qty": 1, "qyt": 2}});
        let violations = check.check::<Flattened>(&typo).unwrap_err();
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"/nte"), "{violations:?}");
        assert!(paths.contains(&"/line/qyt"), "{violations:?}");
        assert!(
            describe(&violations).contains("at /nte: unknown field"),
            "{violations:?}"
        );
        assert!(
            violations.iter().all(|v| v.rule == "unevaluatedProperties"),
            "{violations:?}"
        );
        let orders = SchemaCheck::new(&crate::schema_for::<Order>());
        let bad =
            serde_json::json!({"order_id": "o", "lines": [{"sku": "a", "qty": 1, "price": 3}]});
        let violations = orders.check::<Order>(&bad).unwrap_err();
        assert_eq!(violations[0].path, "/lines/0/price", "{violations:?}");
        let checkout = SchemaCheck::new(&crate::schema_for::<Checkout>());
        let extra = serde_json::json!({"payment": {"kind": "card", "number": "4111", "cvv": 1}, "delivery": "Pickup"});
        let violations = checkout.check::<Checkout>(&extra).unwrap_err();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].path, "/payment/cvv", "{violations:?}");
        let fine = serde_json::json!({"payment": {"kind": "invoice", "days": 30}, "delivery": {"Courier": {"street": "x"}}});
        assert!(checkout.check::<Checkout>(&fine).is_ok());
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct CreateArgs {
        name: String,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(tag = "type")]
    #[allow(dead_code)]
    enum Cmd {
        Create(CreateArgs),
        Delete { id: u32 },
    }

    /// `CreateArgs` joined (in `Cmd`) and on its own (`template`).
    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Batch {
        template: CreateArgs,
        cmd: Cmd,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(tag = "kind")]
    #[allow(dead_code)]
    enum Left {
        X { x: u32 },
        Y { y: u32 },
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(tag = "mode")]
    #[allow(dead_code)]
    enum Right {
        P { p: u32 },
        Q { q: u32 },
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct TwoFlat {
        id: String,
        #[serde(flatten)]
        left: Left,
        #[serde(flatten)]
        right: Right,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct OptionalFlat {
        id: String,
        #[serde(flatten)]
        left: Option<Left>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct FlatWithExtra {
        #[serde(flatten)]
        left: Left,
        #[serde(flatten)]
        extra: std::collections::BTreeMap<String, serde_json::Value>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct FlatAndOptional {
        #[serde(flatten)]
        left: Left,
        #[serde(flatten)]
        right: Option<Right>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(rename = "create args")]
    #[allow(dead_code)]
    struct SpacedArgs {
        name: String,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(tag = "type")]
    #[allow(dead_code)]
    enum SpacedCmd {
        Create(SpacedArgs),
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[schemars(extend("additionalProperties" = true))]
    #[allow(dead_code)]
    struct Aliased {
        #[serde(alias = "customerId")]
        customer_id: Option<String>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Counts {
        qty: u32,
        max: Option<i64>,
        ratio: f64,
    }

    /// `2.0` is an integer to JSON Schema, not to serde: refused by the
    /// schema check, at its field, with why.
    #[test]
    fn integers_written_with_a_fraction_are_refused_at_their_field() {
        let check = SchemaCheck::new(&crate::schema_for::<Counts>());
        let ok = serde_json::json!({"qty": 2, "max": null, "ratio": 2.0});
        assert!(check.check::<Counts>(&ok).is_ok());
        for (bad, at) in [
            (serde_json::json!({"qty": 2.0, "ratio": 1}), "/qty"),
            (
                serde_json::json!({"qty": 2, "max": 1e3, "ratio": 1}),
                "/max",
            ),
        ] {
            let violations = check.check::<Counts>(&bad).unwrap_err();
            assert_eq!(violations.len(), 1, "{violations:?}");
            assert_eq!(violations[0].path, at);
            assert_eq!(violations[0].rule, "type", "{violations:?}");
            assert!(
                violations[0].message.contains("not an integer as written"),
                "{violations:?}"
            );
        }
        // Past u64::MAX or i64::MIN, as digits: out of range, not a fraction.
        for digits in ["18446744073709551616", "-9250000000000000000"] {
            let big: serde_json::Value =
                serde_json::from_str(&format!(r#"{{"qty": 2, "max": {digits}, "ratio": 1}}"#))
                    .unwrap();
            let violations = check.check::<Counts>(&big).unwrap_err();
            assert!(
                violations.iter().any(|v| v.path == "/max"
                    && v.rule == "type"
                    && v.message.contains("outside the 64-bit integers")),
                "{digits}: {violations:?}"
            );
        }
    }

    /// Shapes whose parts add to another object's properties are closed
    /// only where they are joined: every valid input passes, a misspelt
    /// field is still named. A type serde reads more fields of than its
    /// schema lists (aliases) opts out.
    #[test]
    fn closed_schemas_take_what_serde_takes() {
        fn valid<T: DeserializeOwned + JsonSchema>(value: serde_json::Value) {
            let check = SchemaCheck::new(&crate::schema_for::<T>());
            if let Err(violations) = check.check::<T>(&value) {
                panic!("{value} refused: {violations:?}");
            }
        }
        fn unknown<T: DeserializeOwned + JsonSchema + std::fmt::Debug>(
            value: serde_json::Value,
            at: &str,
        ) {
            let check = SchemaCheck::new(&crate::schema_for::<T>());
            let violations = check.check::<T>(&value).unwrap_err();
            assert!(
                violations
                    .iter()
                    .any(|v| v.path == at && v.message.starts_with("unknown field")),
                "{value}: {violations:?}"
            );
        }
        valid::<Cmd>(serde_json::json!({"type": "Create", "name": "n"}));
        valid::<Cmd>(serde_json::json!({"type": "Delete", "id": 1}));
        unknown::<Cmd>(
            serde_json::json!({"type": "Create", "name": "n", "nmae": "m"}),
            "/nmae",
        );
        valid::<TwoFlat>(serde_json::json!({"id": "a", "kind": "X", "x": 1, "mode": "Q", "q": 2}));
        // A variant that does not fit is told as such; its own fields are
        // not "unknown", a misspelt one beside them still is.
        let check = SchemaCheck::new(&crate::schema_for::<TwoFlat>());
        let wrong =
            serde_json::json!({"id": "a", "kind": "X", "x": "one", "mode": "Q", "q": 2, "nte": 1});
        let violations = check.check::<TwoFlat>(&wrong).unwrap_err();
        let told: Vec<(&str, &str)> = violations
            .iter()
            .map(|v| (v.path.as_str(), v.rule.as_str()))
            .collect();
        assert!(told.contains(&("/x", "type")), "{violations:?}");
        assert!(
            told.contains(&("/nte", "unevaluatedProperties")),
            "{violations:?}"
        );
        for field in ["/kind", "/x", "/mode", "/q"] {
            assert!(
                !violations
                    .iter()
                    .any(|v| v.path == field && v.message.starts_with("unknown")),
                "{field}: {violations:?}"
            );
        }
        unknown::<TwoFlat>(
            serde_json::json!({"id": "a", "kind": "X", "x": 1, "mode": "Q", "q": 2, "z": 0}),
            "/z",
        );
        valid::<OptionalFlat>(serde_json::json!({"id": "a", "kind": "Y", "y": 1}));
        valid::<OptionalFlat>(serde_json::json!({"id": "a"}));
        valid::<Aliased>(serde_json::json!({"customerId": "c"}));
        valid::<FlatWithExtra>(serde_json::json!({"kind": "X", "x": 1, "source": "web"}));
        valid::<FlatAndOptional>(serde_json::json!({"kind": "X", "x": 1, "mode": "P", "p": 2}));
        valid::<FlatAndOptional>(serde_json::json!({"kind": "X", "x": 1}));
        valid::<SpacedCmd>(serde_json::json!({"type": "Create", "name": "n"}));
        // A definition joined in one place is still closed where it is
        // used on its own (before, `nte` went through, and serde dropped it).
        valid::<Batch>(serde_json::json!({
            "template": {"name": "n"}, "cmd": {"type": "Create", "name": "m"}
        }));
        unknown::<Batch>(
            serde_json::json!({"template": {"name": "n", "nte": "x"}, "cmd": {"type": "Delete", "id": 1}}),
            "/template/nte",
        );
        unknown::<Batch>(
            serde_json::json!({"template": {"name": "n"}, "cmd": {"type": "Create", "name": "m", "nmae": "x"}}),
            "/cmd/nmae",
        );
        // A schema written by hand (`Tool::workflow`): subschemas applied
        // to the same object are not closed on their own.
        let dependent = serde_json::json!({
            "type": "object",
            "properties": {"card": {}, "billing": {}},
            "dependentSchemas": {"card": {"properties": {"billing": {}}, "required": ["billing"]}},
        });
        let check = SchemaCheck::new(&dependent);
        assert!(check
            .check::<serde_json::Value>(&serde_json::json!({"card": 1, "billing": 2}))
            .is_ok());
        let violations = check
            .check::<serde_json::Value>(&serde_json::json!({"card": 1, "billing": 2, "x": 3}))
            .unwrap_err();
        assert_eq!(violations[0].path, "/x", "{violations:?}");
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Payment {
        Card { number: String },
        Invoice { days: u32 },
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Delivery {
        Pickup,
        Courier { street: String },
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Checkout {
        payment: Payment,
        delivery: Delivery,
        line: Option<Line>,
    }

    /// A value of an enum or an optional struct that fits no alternative
    /// is explained by the field and rule inside the alternative it was
    /// meant for, not "not valid under any of the schemas listed in the
    /// 'oneOf' keyword".
    #[test]
    fn enums_and_options_name_the_field_inside() {
        let check = SchemaCheck::new(&crate::schema_for::<Checkout>());
        let text =
            |value: serde_json::Value| describe(&check.check::<Checkout>(&value).unwrap_err());
        let ok = serde_json::json!({"kind": "card", "number": "4111"});
        assert_eq!(
            text(
                serde_json::json!({"payment": {"kind": "card", "number": 4}, "delivery": "Pickup"})
            ),
            r#"at /payment/number: 4 is not of type "string""#
        );
        assert_eq!(
            text(serde_json::json!({"payment": {"kind": "invoice"}, "delivery": "Pickup"})),
            r#"at /payment: "days" is a required property"#
        );
        assert_eq!(
            text(serde_json::json!({"payment": {"kind": "cheque"}, "delivery": "Pickup"})),
            r#"at /payment/kind: "cheque" is not one of "card" or "invoice""#
        );
        assert_eq!(
            text(serde_json::json!({"payment": ok, "delivery": {"Courier": {"street": 9}}})),
            r#"at /delivery/Courier/street: 9 is not of type "string""#
        );
        assert_eq!(
            text(
                serde_json::json!({"payment": ok, "delivery": "Pickup", "line": {"sku": "a", "qty": "x"}})
            ),
            r#"at /line/qty: "x" is not of type "integer""#
        );
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Priority {
        /// Whenever.
        Low,
        /// Today.
        High,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Carrier {
        /// At the counter.
        Pickup,
        Drone,
        Courier {
            street: String,
        },
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Ticket {
        priority: Priority,
        carrier: Carrier,
        escalation: Option<Priority>,
    }

    /// With doc comments on its variants, a unit enum is a `oneOf` of one
    /// `const` per variant: a bad value is told the values there are, as
    /// for a plain `enum`, and so is a bad string for the unit variants of
    /// an enum that also has others.
    #[test]
    fn unit_variants_with_docs_list_their_values() {
        let check = SchemaCheck::new(&crate::schema_for::<Ticket>());
        assert!(
            crate::schema_for::<Ticket>()["$defs"]["Priority"]["oneOf"].is_array(),
            "schemars no longer gives documented variants one `const` each"
        );
        let text = |value: serde_json::Value| describe(&check.check::<Ticket>(&value).unwrap_err());
        assert_eq!(
            text(serde_json::json!({"priority": "Medium", "carrier": "Pickup"})),
            r#"at /priority: "Medium" is not one of "Low" or "High""#
        );
        assert_eq!(
            text(serde_json::json!({"priority": 2, "carrier": "Drone"})),
            r#"at /priority: 2 is not one of "Low" or "High""#
        );
        assert_eq!(
            text(serde_json::json!({"priority": "Low", "carrier": "Walk"})),
            r#"at /carrier: "Walk" is not one of "Drone" or "Pickup""#
        );
        assert_eq!(
            text(
                serde_json::json!({"priority": "Low", "carrier": "Drone", "escalation": "Urgent"})
            ),
            r#"at /escalation: "Urgent" is not one of "Low" or "High""#
        );
        // A value of the struct variant's kind is still explained inside it.
        assert_eq!(
            text(serde_json::json!({"priority": "Low", "carrier": {"Courier": {"street": 1}}})),
            r#"at /carrier/Courier/street: 1 is not of type "string""#
        );
    }
}
