//! JSON Schema transforms for tools: giving every tool an object schema,
//! the strict form OpenAI's structured outputs accept, and undoing what
//! strict mode does to arguments (explicit `null`s for optional fields).
//!
//! All pure functions on `serde_json::Value`, tested on schemars' output.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::{json, Map, Value};

/// How a tool's parameters relate to the input type behind it. Providers
/// want an object schema for tool parameters (and for strict structured
/// outputs), with no combinator beside it, so other inputs are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The input is a plain object; the arguments are the input.
    Object,
    /// The input is not an object, or is one with a `oneOf`/`anyOf`/
    /// `allOf`/`not`/`enum` at its root (a `#[serde(flatten)]` enum field);
    /// the arguments are `{"input": <input>}`.
    Wrapped,
    /// The input is `()` (schema `{"type": "null"}`); the arguments are `{}`.
    Unit,
}

impl Shape {
    /// The input inside arguments of this shape.
    pub(crate) fn unwrap(self, args: Value) -> Value {
        match self {
            Shape::Object => args,
            Shape::Wrapped => match args {
                Value::Object(mut map) => map.remove(WRAPPED_KEY).unwrap_or(Value::Null),
                _ => Value::Null,
            },
            Shape::Unit => Value::Null,
        }
    }

    /// Where the value at `path` (a JSON pointer) of the input sits in
    /// arguments of this shape.
    pub(crate) fn args_path(self, path: &str) -> String {
        match self {
            Shape::Wrapped => format!("/{WRAPPED_KEY}{path}"),
            Shape::Object | Shape::Unit => path.to_owned(),
        }
    }
}

/// The property a non-object input is wrapped in.
pub(crate) const WRAPPED_KEY: &str = "input";

/// Keywords OpenAI refuses at the root of tool parameters ("must have type
/// 'object' and not have 'oneOf'/'anyOf'/'allOf'/'enum'/'not' at the top
/// level"); Anthropic refuses the combinators too.
const ROOT_REFUSED: &[&str] = &["oneOf", "anyOf", "allOf", "not", "enum"];

/// An object schema for a value of `schema`, and how to get the value back.
/// `$defs` move to the new root so `#/$defs/..` references still resolve.
/// An input that refers to itself (a recursive type's `#`) moves into
/// `$defs` too, under its title (or `Input`), the wrapping property a
/// reference to it: OpenAI's strict mode takes references to top-level
/// definitions only, not to `#/properties/input`.
pub(crate) fn object_schema(schema: Value) -> (Value, Shape) {
    let Value::Object(mut inner) = schema else {
        // `true`: any value at all.
        return (wrap(Map::new(), schema, None), Shape::Wrapped);
    };
    // A struct with a `#[serde(flatten)]` enum field is an object whose
    // root also carries the enum's `oneOf`: providers refuse it as it is.
    let refused = ROOT_REFUSED.iter().any(|k| inner.contains_key(*k));
    if inner.get("type").and_then(Value::as_str) == Some("object") && !refused {
        return (Value::Object(inner), Shape::Object);
    }
    let dialect = inner.remove("$schema");
    if inner.get("type").and_then(Value::as_str) == Some("null") {
        let mut root = Map::new();
        if let Some(dialect) = dialect {
            root.insert("$schema".into(), dialect);
        }
        root.insert("type".into(), json!("object"));
        root.insert("properties".into(), json!({}));
        root.insert("additionalProperties".into(), json!(false));
        return (Value::Object(root), Shape::Unit);
    }
    let mut defs = inner.remove("$defs");
    // The title names the type; on a property it would read as a field name.
    let title = inner.remove("title");
    let mut inner = Value::Object(inner);
    let name = definition_name(title.as_ref().and_then(Value::as_str), defs.as_ref());
    let target = format!("#/$defs/{name}");
    let mut recursive = rebase_root_refs(&mut inner, &target);
    if let Some(Value::Object(defs)) = &mut defs {
        for def in defs.values_mut() {
            recursive |= rebase_root_refs(def, &target);
        }
    }
    if recursive {
        if let Value::Object(defs) = defs.get_or_insert_with(|| json!({})) {
            defs.insert(
                name,
                std::mem::replace(&mut inner, json!({ "$ref": target })),
            );
        }
    }
    let mut root = Map::new();
    if let Some(dialect) = dialect {
        root.insert("$schema".into(), dialect);
    }
    (wrap(root, inner, defs), Shape::Wrapped)
}

/// The name a wrapped input that refers to itself gets in `$defs`: its
/// title, in characters a `$ref` needs no escape for, or `Input`; with a
/// number added should a definition have it already.
fn definition_name(title: Option<&str>, defs: Option<&Value>) -> String {
    let base: String = match title.filter(|t| !t.is_empty()) {
        Some(title) => title
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        None => "Input".to_owned(),
    };
    let taken = |name: &str| defs.and_then(|d| d.get(name)).is_some();
    let mut name = base.clone();
    let mut n = 0;
    while taken(&name) {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}

/// Points `$ref`s into the old root (`#`, `#/properties/..`) at `target`,
/// where that root now sits; `#/$defs/..` stay, as the definitions move to
/// the new root. True if any did point there: the root refers to itself.
fn rebase_root_refs(schema: &mut Value, target: &str) -> bool {
    let mut moved = false;
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match (key.as_str(), value) {
                    // Keyed by names (a field may be called `default`): every value a schema.
                    (
                        "properties" | "patternProperties" | "$defs" | "definitions"
                        | "dependentSchemas",
                        Value::Object(named),
                    ) => {
                        for sub in named.values_mut() {
                            moved |= rebase_root_refs(sub, target);
                        }
                    }
                    // Values, not schemas: a `$ref` in them is data.
                    ("const" | "enum" | "default" | "examples", _) => {}
                    ("$ref", Value::String(reference)) => {
                        let rebased = match reference.strip_prefix('#') {
                            Some(pointer) if !pointer.starts_with("/$defs/") => {
                                Some(format!("{target}{pointer}"))
                            }
                            _ => None,
                        };
                        if let Some(rebased) = rebased {
                            *reference = rebased;
                            moved = true;
                        }
                    }
                    (_, other) => moved |= rebase_root_refs(other, target),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                moved |= rebase_root_refs(item, target);
            }
        }
        _ => {}
    }
    moved
}

fn wrap(mut root: Map<String, Value>, inner: Value, defs: Option<Value>) -> Value {
    root.insert("type".into(), json!("object"));
    root.insert("properties".into(), json!({ WRAPPED_KEY: inner }));
    root.insert("required".into(), json!([WRAPPED_KEY]));
    root.insert("additionalProperties".into(), json!(false));
    if let Some(defs) = defs {
        root.insert("$defs".into(), defs);
    }
    Value::Object(root)
}

/// `schema` with its `$ref`s followed, and merged into the keys beside
/// them as [`merge_schema`] does: a validator applies both, and an
/// internally tagged variant's fields are in its `$ref`, its tag beside it.
fn resolve_merged<'a>(root: &'a Value, schema: &'a Value) -> Cow<'a, Value> {
    let mut schema = Cow::Borrowed(schema);
    for _ in 0..16 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(target) = reference.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            break;
        };
        schema = match (&schema, target) {
            (Cow::Borrowed(node), _) if node.as_object().is_some_and(|m| m.len() == 1) => {
                Cow::Borrowed(target)
            }
            (_, Value::Object(target)) => {
                let mut map = schema.as_object().cloned().unwrap_or_default();
                map.remove("$ref");
                merge_schema(&mut map, target);
                Cow::Owned(Value::Object(map))
            }
            _ => break,
        };
    }
    schema
}

/// Removes `null` values of optional properties (not in `required`),
/// wherever `schema` describes them. Strict-mode models must send every
/// property, with `null` for "absent"; serde wants such fields missing
/// (a `#[serde(default)] n: u32` rejects `null`), and an optional
/// property's `null` means "absent" in both readings.
pub(crate) fn strip_optional_nulls(root: &Value, value: &mut Value) {
    strip(root, root, value, 0);
}

fn strip(root: &Value, schema: &Value, value: &mut Value, depth: u32) {
    if depth > 64 {
        return;
    }
    let schema = resolve_merged(root, schema);
    let schema = schema.as_ref();
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let required: HashSet<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                map.retain(|key, v| {
                    !(v.is_null() && props.contains_key(key) && !required.contains(key.as_str()))
                });
                for (key, v) in map.iter_mut() {
                    if let Some(sub) = props.get(key) {
                        strip(root, sub, v, depth + 1);
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for v in map.values_mut() {
                    strip(root, sub, v, depth + 1);
                }
            }
            for branch in branches(schema) {
                let resolved = resolve_merged(root, branch);
                let covers = resolved
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|props| map.keys().all(|k| props.contains_key(k)));
                if covers {
                    strip(root, branch, value, depth + 1);
                    break;
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items").filter(|s| s.is_object()) {
                for item in items {
                    strip(root, sub, item, depth + 1);
                }
            }
        }
        _ => {}
    }
}

fn branches(schema: &Value) -> impl Iterator<Item = &Value> {
    ["anyOf", "oneOf", "allOf"]
        .into_iter()
        .filter_map(|k| schema.get(k).and_then(Value::as_array))
        .flatten()
}

/// Keywords that only describe a schema, constraining nothing: beside a
/// recursive `$ref`, which is not inlined, they are dropped.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$comment",
];

/// String formats OpenAI's strict mode accepts.
const STRICT_FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
];

/// The strict form of an object schema, as OpenAI's structured outputs
/// (and `strict: true` function tools) accept it:
///
/// - every object has `additionalProperties: false` and lists every
///   property in `required`; a property that was optional becomes
///   nullable (`"type": ["integer", "null"]`, or `anyOf [.., {"type": "null"}]`),
///   so the model sends `null` for "absent";
/// - `oneOf` becomes `anyOf` (schemars' enums; their branches exclude
///   each other anyway), a one-element `allOf` is merged into its parent,
///   and a `$ref` with sibling keywords is inlined (strict mode allows no
///   siblings next to `$ref`), unless the schema it points at holds it (a
///   recursive type's field with a doc comment): inlined, that would never
///   end, so the `$ref` stays bare and the annotations beside it
///   (`description`, `title`...) are dropped;
/// - only supported keywords stay: `type`, `properties`, `required`,
///   `additionalProperties`, `items`, `enum`, `const`, `anyOf`, `$ref`,
///   `$defs`, `description`, `title`, and by type `pattern` and the
///   supported `format`s (strings), `minimum`/`maximum`/`exclusive*`/
///   `multipleOf` (numbers, among them the range of every Rust integer
///   type), `minItems`/`maxItems` (arrays). Dropped constraints
///   (`default`, `minLength`, `uniqueItems`, schemars' `uint32`
///   formats...) are still checked when the tool is called.
///
/// Errors, each with its JSON pointer into `schema`, for what strict mode
/// cannot express: maps (`HashMap` with any key type, or a map flattened
/// beside a struct's fields: anything but `additionalProperties: false`),
/// schemas that accept anything (`serde_json::Value`), tuples, an object
/// with `anyOf`/`oneOf`/`allOf`/`not` beside its properties (a struct with
/// a `#[serde(flatten)]` enum field), an `allOf` of more than one schema,
/// a recursive `$ref` with constraints beside it, and a root that is not
/// an object.
pub fn strict_schema(schema: &Value) -> Result<Value, Vec<String>> {
    let mut problems = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        problems.push("(root): strict mode needs an object at the root".to_owned());
    }
    // The root is being inlined from the start: a recursive type's `#`.
    let mut inlining = vec!["#".to_owned()];
    let out = strict_node(schema, schema, "", &mut problems, 0, &mut inlining);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `inlining`: the `$ref`s (and definitions) whose schema `node` sits
/// inside, which a `$ref` beside other keywords is not inlined again.
fn strict_node(
    root: &Value,
    node: &Value,
    path: &str,
    problems: &mut Vec<String>,
    depth: u32,
    inlining: &mut Vec<String>,
) -> Value {
    let here = if path.is_empty() { "(root)" } else { path };
    if depth > 64 {
        problems.push(format!("{here}: schema nested too deeply"));
        return node.clone();
    }
    let Value::Object(original) = node else {
        problems.push(format!(
            "{here}: a schema that accepts anything has no strict form (a `serde_json::Value` field?)"
        ));
        return node.clone();
    };
    let mut map = original.clone();
    if let Some(Value::Array(all)) = map.get("allOf") {
        if all.len() == 1 {
            let only = all[0].clone();
            map.remove("allOf");
            if let Value::Object(only) = only {
                merge_schema(&mut map, &only);
            }
        }
    }
    let mut inlined = false;
    if map.len() > 1 {
        if let Some(reference) = map.get("$ref").and_then(Value::as_str).map(str::to_owned) {
            let target = reference
                .strip_prefix('#')
                .and_then(|p| root.pointer(p))
                .and_then(Value::as_object);
            match target {
                // A recursive type's field with a doc comment: inlined, the
                // type would hold the field again at every level, without
                // end (and exponentially so, for two such fields). The
                // reference stays bare; only annotations were beside it.
                Some(_) if inlining.contains(&reference) => {
                    let beside: Vec<&str> = map
                        .keys()
                        .map(String::as_str)
                        .filter(|k| *k != "$ref" && !ANNOTATIONS.contains(k))
                        .collect();
                    if beside.is_empty() {
                        map.retain(|k, _| k == "$ref");
                    } else {
                        problems.push(format!(
                            "{here}: a recursive $ref `{reference}` with {} beside it has no \
                             strict form",
                            beside.join(", ")
                        ));
                    }
                }
                Some(target) => {
                    map.remove("$ref");
                    merge_schema(&mut map, target);
                    inlining.push(reference);
                    inlined = true;
                }
                None => problems.push(format!("{here}: unresolvable $ref `{reference}`")),
            }
        }
    }
    if let Some(one_of) = map.remove("oneOf") {
        if map.contains_key("anyOf") {
            problems.push(format!("{here}: both anyOf and oneOf"));
        } else {
            map.insert("anyOf".into(), one_of);
        }
    }
    // Strict mode has no intersections, and no alternatives beside an
    // object's own properties; dropping either would let the model send
    // arguments the tool refuses.
    if let Some(Value::Array(all)) = map.get("allOf") {
        if all.len() > 1 {
            problems.push(format!(
                "{here}: allOf with more than one schema has no strict form"
            ));
        }
    }
    if map.contains_key("properties")
        && ["anyOf", "allOf", "not"]
            .iter()
            .any(|k| map.contains_key(*k))
    {
        problems.push(format!(
            "{here}: an object with anyOf/oneOf/allOf/not beside its properties (a `#[serde(flatten)]` enum?) has no strict form"
        ));
    }
    let types: Vec<&str> = match map.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let has = |t: &str| types.contains(&t);
    let is_object = has("object") || map.contains_key("properties");
    let mut out = Map::new();
    for (key, value) in &map {
        let keep = match key.as_str() {
            "type" | "enum" | "const" | "description" | "title" | "$ref" => true,
            "pattern" => has("string"),
            "format" => {
                has("string") && value.as_str().is_some_and(|f| STRICT_FORMATS.contains(&f))
            }
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
                has("number") || has("integer")
            }
            "minItems" | "maxItems" => has("array"),
            "items" => {
                match value {
                    Value::Object(_) => {
                        let sub = strict_node(
                            root,
                            value,
                            &format!("{path}/items"),
                            problems,
                            depth + 1,
                            inlining,
                        );
                        out.insert(key.clone(), sub);
                    }
                    // `items: false` after `prefixItems`: a tuple.
                    Value::Bool(false) => {
                        problems.push(format!("{here}: tuples have no strict form"))
                    }
                    _ => problems.push(format!(
                        "{here}/items: a schema that accepts anything has no strict form"
                    )),
                }
                false
            }
            "anyOf" => {
                let branches: Vec<Value> = value
                    .as_array()
                    .map(|bs| {
                        bs.iter()
                            .enumerate()
                            .map(|(i, b)| {
                                strict_node(
                                    root,
                                    b,
                                    &format!("{path}/anyOf/{i}"),
                                    problems,
                                    depth + 1,
                                    inlining,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Array(branches));
                false
            }
            "$defs" | "definitions" => {
                let defs: Map<String, Value> = value
                    .as_object()
                    .map(|defs| {
                        defs.iter()
                            .map(|(name, d)| {
                                let p = format!("{path}/{key}/{name}");
                                // Inside its own definition, a reference
                                // to it is the recursion itself.
                                let escaped = crate::validate::pointer_token(name);
                                inlining.push(format!("#{path}/{key}/{escaped}"));
                                let strict =
                                    strict_node(root, d, &p, problems, depth + 1, inlining);
                                inlining.pop();
                                (name.clone(), strict)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Object(defs));
                false
            }
            // Anything but `false` lets keys beyond the properties in: a
            // map (`HashMap<String, _>`), a flattened map beside a struct's
            // fields (`true`), or a map with integer keys (its keys' pattern).
            "additionalProperties" | "unevaluatedProperties" | "patternProperties" => {
                if key == "patternProperties" || value != &Value::Bool(false) {
                    problems.push(format!(
                        "{here}: maps (objects with arbitrary keys) have no strict form"
                    ));
                }
                false
            }
            "prefixItems" => {
                problems.push(format!("{here}: tuples have no strict form"));
                false
            }
            // `properties` and `required` are rebuilt below; the rest is unsupported.
            _ => false,
        };
        if keep {
            out.insert(key.clone(), value.clone());
        }
    }
    if is_object {
        let empty = Map::new();
        let props = map
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let required: HashSet<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut strict_props = Map::new();
        for (name, sub) in props {
            let sub = strict_node(
                root,
                sub,
                &format!("{path}/properties/{name}"),
                problems,
                depth + 1,
                inlining,
            );
            let sub = if required.contains(name.as_str()) {
                sub
            } else {
                nullable(sub)
            };
            strict_props.insert(name.clone(), sub);
        }
        let names: Vec<Value> = props.keys().map(|k| Value::String(k.clone())).collect();
        // `Option<S>` of an inlined struct: `["object", "null"]`, kept.
        let object = if has("null") {
            json!(["object", "null"])
        } else {
            json!("object")
        };
        out.insert("type".into(), object);
        out.insert("properties".into(), Value::Object(strict_props));
        out.insert("required".into(), Value::Array(names));
        out.insert("additionalProperties".into(), json!(false));
    } else if !out.contains_key("type")
        && !out.contains_key("anyOf")
        && !out.contains_key("$ref")
        && !out.contains_key("enum")
        && !out.contains_key("const")
    {
        problems.push(format!(
            "{here}: a schema that accepts anything has no strict form (a `serde_json::Value` field?)"
        ));
    }
    if inlined {
        inlining.pop();
    }
    Value::Object(out)
}

/// `schema`, also accepting `null`.
fn nullable(mut schema: Value) -> Value {
    let Value::Object(map) = &mut schema else {
        return schema;
    };
    let is_null = |s: &Value| s.get("type").and_then(Value::as_str) == Some("null");
    if !map.contains_key("const") {
        if let Some(t) = map.get_mut("type") {
            match t {
                Value::String(name) if name != "null" => *t = json!([name.clone(), "null"]),
                Value::Array(names) if !names.contains(&json!("null")) => names.push(json!("null")),
                _ => {}
            }
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                if !values.contains(&Value::Null) {
                    values.push(Value::Null);
                }
            }
            return schema;
        }
        if let Some(Value::Array(any)) = map.get_mut("anyOf") {
            if !any.iter().any(is_null) {
                any.push(json!({"type": "null"}));
            }
            return schema;
        }
    }
    // `$ref`, `const`, bare `enum`: wrap, keeping the description outside.
    let mut outer = Map::new();
    if let Some(description) = map.remove("description") {
        outer.insert("description".into(), description);
    }
    outer.insert("anyOf".into(), json!([schema, {"type": "null"}]));
    Value::Object(outer)
}

/// Puts `other`'s keywords into `map`, as a `$ref` (or a lone `allOf`)
/// beside them means both: the keys `map` has win (a field's description
/// over its type's), but `properties` and `required` are joined, so that
/// an internally tagged variant (`{"$ref": <its struct>, "properties":
/// {"type": ..}}`) keeps the struct's fields beside its tag.
fn merge_schema(map: &mut Map<String, Value>, other: &Map<String, Value>) {
    for (k, v) in other {
        match (k.as_str(), map.get_mut(k), v) {
            ("$defs", ..) => {}
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (name, schema) in theirs {
                    mine.entry(name.clone()).or_insert_with(|| schema.clone());
                }
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for name in theirs {
                    if !mine.contains(name) {
                        mine.push(name.clone());
                    }
                }
            }
            _ => {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_for;
    use schemars::JsonSchema;
    use serde::Deserialize;

    /// Where to ship.
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Address {
        /// Street and number.
        street: String,
        zip: Option<String>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Priority {
        Low,
        High,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Payment {
        /// Pay on delivery.
        Cash,
        Card {
            number: String,
            cvv: Option<u16>,
        },
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Order {
        /// The customer.
        customer: String,
        /// How many.
        #[schemars(range(min = 1, max = 99))]
        quantity: u32,
        note: Option<String>,
        #[serde(default)]
        gift: bool,
        priority: Priority,
        maybe_priority: Option<Priority>,
        /// Delivery address.
        address: Address,
        billing: Option<Address>,
        payment: Payment,
        tags: Vec<String>,
        #[schemars(length(min = 2))]
        code: String,
        #[schemars(email)]
        email: String,
    }

    /// Every object node of a strict schema obeys the rules.
    fn assert_strict(node: &Value, path: &str) {
        let Value::Object(map) = node else {
            panic!("{path}: not an object schema: {node}");
        };
        assert!(!map.contains_key("oneOf"), "{path}: oneOf left: {node}");
        assert!(!map.contains_key("allOf"), "{path}: allOf left: {node}");
        assert!(!map.contains_key("default"), "{path}: default left: {node}");
        assert!(
            !map.contains_key("minLength"),
            "{path}: minLength left: {node}"
        );
        if map.contains_key("$ref") {
            assert_eq!(map.len(), 1, "{path}: $ref with siblings: {node}");
        }
        if let Some(format) = map.get("format") {
            assert!(
                STRICT_FORMATS.contains(&format.as_str().unwrap()),
                "{path}: format {format}"
            );
        }
        if let Some(props) = map.get("properties").and_then(Value::as_object) {
            assert_eq!(map["additionalProperties"], json!(false), "{path}: {node}");
            let required: Vec<&str> = map["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let mut keys: Vec<&str> = props.keys().map(String::as_str).collect();
            keys.sort();
            let mut required_sorted = required.clone();
            required_sorted.sort();
            assert_eq!(keys, required_sorted, "{path}: not every property required");
            for (name, sub) in props {
                assert_strict(sub, &format!("{path}/properties/{name}"));
            }
        }
        for key in ["anyOf"] {
            if let Some(branches) = map.get(key).and_then(Value::as_array) {
                for (i, b) in branches.iter().enumerate() {
                    assert_strict(b, &format!("{path}/{key}/{i}"));
                }
            }
        }
        if let Some(items) = map.get("items") {
            assert_strict(items, &format!("{path}/items"));
        }
        if let Some(defs) = map.get("$defs").and_then(Value::as_object) {
            for (name, d) in defs {
                assert_strict(d, &format!("{path}/$defs/{name}"));
            }
        }
    }

    fn accepts(schema: &Value, value: &Value) -> bool {
        jsonschema::validator_for(schema)
            .expect("strict schema compiles")
            .is_valid(value)
    }

    #[test]
    fn strict_form_of_nested_structs_enums_and_options() {
        let schema = schema_for::<Order>();
        let strict = strict_schema(&schema).expect("convertible");
        assert_strict(&strict, "");
        let props = &strict["properties"];
        // Optional fields: required but nullable.
        assert_eq!(props["note"]["type"], json!(["string", "null"]));
        assert_eq!(props["gift"]["type"], json!(["boolean", "null"]));
        // Required fields stay non-nullable.
        assert_eq!(props["customer"]["type"], json!("string"));
        assert_eq!(props["customer"]["description"], json!("The customer."));
        // Numeric bounds are supported; schemars' `uint32` format is not.
        assert_eq!(props["quantity"]["minimum"], json!(1));
        assert_eq!(props["quantity"]["maximum"], json!(99));
        assert!(props["quantity"].get("format").is_none());
        assert!(props["code"].get("minLength").is_none());
        assert_eq!(props["email"]["format"], json!("email"));
        // A `$ref` with a description sibling is inlined, keeping the field's doc.
        assert_eq!(props["address"]["description"], json!("Delivery address."));
        assert_eq!(props["address"]["type"], json!("object"));
        assert_eq!(
            props["address"]["properties"]["zip"]["type"],
            json!(["string", "null"])
        );
        // Option<struct>: anyOf with a null branch.
        let billing = props["billing"]["anyOf"].as_array().unwrap();
        assert!(billing.contains(&json!({"type": "null"})), "{billing:?}");
        // Data enums: oneOf became anyOf; variants are strict objects.
        let payment = strict["$defs"]["Payment"]["anyOf"].as_array().unwrap();
        assert_eq!(payment.len(), 2);
        assert_eq!(payment[0]["const"], json!("Cash"));
        assert_eq!(payment[0]["description"], json!("Pay on delivery."));

        // What a strict model would send fits the strict schema...
        let sent = json!({
            "customer": "ada", "quantity": 2, "note": null, "gift": null,
            "priority": "High", "maybe_priority": null,
            "address": {"street": "Main 1", "zip": null}, "billing": null,
            "payment": {"Card": {"number": "4111", "cvv": null}},
            "tags": [], "code": "ab", "email": "a@b.c"
        });
        assert!(accepts(&strict, &sent));
        // ...and, once its nulls for optional fields are stripped, the
        // original schema and the Rust type.
        let mut stripped = sent.clone();
        strip_optional_nulls(&schema, &mut stripped);
        assert!(stripped.get("gift").is_none(), "{stripped}");
        assert!(stripped["address"].get("zip").is_none(), "{stripped}");
        assert!(
            stripped["payment"]["Card"].get("cvv").is_none(),
            "{stripped}"
        );
        assert!(accepts(&schema, &stripped), "{stripped}");
        serde_json::from_value::<Order>(stripped).expect("fits the type");
        // Strict mode refuses what the original refuses: missing and extra keys.
        let mut missing = sent.clone();
        missing.as_object_mut().unwrap().remove("note");
        assert!(!accepts(&strict, &missing));
        let mut extra = sent;
        extra["surprise"] = json!(1);
        assert!(!accepts(&strict, &extra));
    }

    #[test]
    fn unit_enums_with_docs_become_any_of_consts() {
        let schema = schema_for::<Payment>();
        // A data enum at the root is not an object: wrapped first.
        let (object, shape) = object_schema(schema);
        assert_eq!(shape, Shape::Wrapped);
        let strict = strict_schema(&object).expect("convertible");
        assert_strict(&strict, "");
        assert!(accepts(&strict, &json!({"input": "Cash"})));
        assert!(accepts(
            &strict,
            &json!({"input": {"Card": {"number": "1", "cvv": 123}}})
        ));
        assert!(!accepts(&strict, &json!({"input": "Cheque"})));
        assert_eq!(
            Shape::Wrapped.unwrap(json!({"input": "Cash"})),
            json!("Cash")
        );
    }

    #[test]
    fn nullable_enum_and_const_forms() {
        assert_eq!(
            nullable(json!({"type": "string", "enum": ["a", "b"]})),
            json!({"type": ["string", "null"], "enum": ["a", "b", null]})
        );
        assert_eq!(
            nullable(json!({"const": "x", "description": "d"})),
            json!({"description": "d", "anyOf": [{"const": "x"}, {"type": "null"}]})
        );
        assert_eq!(
            nullable(json!({"$ref": "#/$defs/A"})),
            json!({"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]})
        );
        // Already nullable: unchanged.
        assert_eq!(
            nullable(json!({"type": ["integer", "null"]})),
            json!({"type": ["integer", "null"]})
        );
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Tree {
        label: String,
        children: Vec<Tree>,
        parent: Option<Box<Tree>>,
    }

    #[test]
    fn recursive_types_keep_refs_into_strict_defs() {
        let (object, _) = object_schema(schema_for::<Vec<Tree>>());
        let strict = strict_schema(&object).expect("convertible");
        assert_strict(&strict, "");
        assert!(strict["$defs"]["Tree"]["properties"]["children"]["items"]["$ref"].is_string());
        let tree = json!({"input": [{"label": "a", "children": [
            {"label": "b", "children": [], "parent": null}], "parent": null}]});
        assert!(accepts(&strict, &tree));
    }

    #[test]
    fn a_nullable_object_stays_nullable() {
        let schema = json!({"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "items": {"type": ["object", "null"],
                "required": ["a"], "properties": {"a": {"type": "string"}}}}}});
        let strict = strict_schema(&schema).expect("convertible");
        let item = &strict["properties"]["items"]["items"];
        assert_eq!(item["type"], json!(["object", "null"]));
        assert_eq!(item["additionalProperties"], false);
        assert!(accepts(&strict, &json!({"items": [null, {"a": "x"}]})));
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Loose {
        counts: std::collections::HashMap<String, u32>,
        extra: serde_json::Value,
        pair: (u8, u8),
        by_number: std::collections::HashMap<u32, String>,
        nested: WithExtra,
    }

    /// Its own fields, and any other key beside them.
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct WithExtra {
        name: String,
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
    }

    #[test]
    fn inexpressible_schemas_are_reported_with_paths() {
        let problems = strict_schema(&schema_for::<Loose>()).unwrap_err();
        let text = problems.join("\n");
        assert!(text.contains("/properties/counts: maps"), "{text}");
        assert!(text.contains("/properties/extra"), "{text}");
        assert!(text.contains("/properties/pair: tuples"), "{text}");
        assert!(text.contains("/properties/by_number: maps"), "{text}");
        assert!(text.contains("WithExtra: maps"), "{text}");
        assert!(strict_schema(&json!({"type": "string"})).is_err());
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(tag = "method", rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Method {
        Card { number: String },
        Invoice { days: u32 },
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct FlatOrder {
        order_id: String,
        #[serde(flatten)]
        payment: Method,
    }

    /// schemars puts a flattened enum's `oneOf` at the root of the struct's
    /// schema, which providers refuse: the input is wrapped like a
    /// non-object one, and strict mode, which cannot say "these properties
    /// and one of those", reports it instead of dropping the `oneOf`.
    #[test]
    fn a_flattened_enum_is_wrapped_and_has_no_strict_form() {
        let schema = schema_for::<FlatOrder>();
        assert!(schema["oneOf"].is_array(), "{schema}");
        let (object, shape) = object_schema(schema);
        assert_eq!(shape, Shape::Wrapped);
        assert_eq!(object["type"], json!("object"));
        for keyword in ROOT_REFUSED {
            assert!(
                object.get(keyword).is_none(),
                "{keyword} at the root: {object}"
            );
        }
        assert!(
            object["properties"]["input"]["oneOf"].is_array(),
            "{object}"
        );
        assert!(object["properties"]["input"].get("title").is_none());
        let args = json!({"input": {"order_id": "o1", "method": "card", "number": "4111"}});
        assert!(accepts(&object, &args));
        assert!(!accepts(
            &object,
            &json!({"input": {"order_id": "o1", "method": "cash"}})
        ));
        serde_json::from_value::<FlatOrder>(Shape::Wrapped.unwrap(args)).expect("fits the type");
        assert_eq!(Shape::Wrapped.args_path("/days"), "/input/days");

        let problems = strict_schema(&object).unwrap_err().join("\n");
        assert!(
            problems.contains("/properties/input: an object with anyOf/oneOf/allOf/not"),
            "{problems}"
        );
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct FlatNode {
        #[serde(flatten)]
        payment: Method,
        children: Vec<FlatNode>,
        /// Named like a keyword whose value is data, not a schema.
        default: Option<Box<FlatNode>>,
    }

    /// A recursive root refers to itself as `#`; wrapped, it moves into
    /// `$defs` under its title, and so must its references: OpenAI's
    /// strict mode takes references to top-level definitions only.
    #[test]
    fn references_to_a_wrapped_root_follow_it() {
        let schema = schema_for::<FlatNode>();
        assert_eq!(
            schema["properties"]["children"]["items"]["$ref"],
            json!("#")
        );
        let (object, shape) = object_schema(schema);
        assert_eq!(shape, Shape::Wrapped);
        assert_eq!(
            object["properties"]["input"],
            json!({"$ref": "#/$defs/FlatNode"})
        );
        let node = &object["$defs"]["FlatNode"];
        assert_eq!(
            node["properties"]["children"]["items"]["$ref"],
            json!("#/$defs/FlatNode")
        );
        assert_eq!(
            node["properties"]["default"]["anyOf"][0]["$ref"],
            json!("#/$defs/FlatNode")
        );
        assert!(node.get("title").is_none(), "{node}");
        let node = json!({"method": "invoice", "days": 30, "children": [
            {"method": "card", "number": "4111", "children": []}]});
        assert!(accepts(&object, &json!({ "input": node })));
        // Were `#` still the new root, the child would have to be `{"input": ..}`.
        let bad = json!({"method": "invoice", "days": 30, "children": [
            {"input": {"method": "card", "number": "4111", "children": []}}]});
        assert!(!accepts(&object, &json!({ "input": bad })));
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct CreateArgs {
        name: String,
        #[serde(default)]
        count: u32,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(tag = "type")]
    #[allow(dead_code)]
    enum Command {
        Create(CreateArgs),
        Delete { id: u32 },
    }

    /// An internally tagged newtype variant is its struct's `$ref` beside
    /// the tag's property: inlined, the struct's fields join the tag.
    /// Before, the tag's `properties` hid them, and the strict schema
    /// allowed only `{"type": "Create"}`.
    #[test]
    fn an_internally_tagged_newtype_variant_keeps_its_fields() {
        let (object, _) = object_schema(schema_for::<Command>());
        let strict = strict_schema(&object).expect("convertible");
        assert_strict(&strict, "");
        let create = json!({"input": {"type": "Create", "name": "n", "count": null}});
        assert!(accepts(&strict, &create), "{strict}");
        assert!(!accepts(&strict, &json!({"input": {"type": "Create"}})));
        let delete = json!({"input": {"type": "Delete", "id": 7}});
        assert!(accepts(&strict, &delete), "{strict}");
        // What a strict model sends for the optional field: `null`, which
        // goes before serde (a `#[serde(default)] u32` refuses `null`).
        let mut sent = json!({"input": {"type": "Create", "name": "n", "count": null}});
        strip_optional_nulls(&object, &mut sent);
        assert_eq!(sent, json!({"input": {"type": "Create", "name": "n"}}));
    }

    #[test]
    fn an_intersection_has_no_strict_form() {
        let schema = json!({
            "type": "object",
            "properties": {"code": {"type": "string", "allOf": [{"pattern": "^a"}, {"pattern": "z$"}]}},
            "required": ["code"]
        });
        let problems = strict_schema(&schema).unwrap_err().join("\n");
        assert!(
            problems.contains("/properties/code: allOf with more than one schema"),
            "{problems}"
        );
        // One schema is merged into its parent, as before.
        let one = json!({
            "type": "object",
            "properties": {"code": {"allOf": [{"type": "string"}], "description": "d"}},
            "required": ["code"]
        });
        let strict = strict_schema(&one).expect("convertible");
        assert_eq!(
            strict["properties"]["code"],
            json!({"type": "string", "description": "d"})
        );
    }

    #[test]
    fn object_shapes() {
        let (object, shape) = object_schema(schema_for::<()>());
        assert_eq!(shape, Shape::Unit);
        assert_eq!(object["properties"], json!({}));
        assert_eq!(Shape::Unit.unwrap(json!({})), Value::Null);
        let (object, shape) = object_schema(schema_for::<String>());
        assert_eq!(shape, Shape::Wrapped);
        assert_eq!(object["properties"]["input"]["type"], json!("string"));
        assert_eq!(object["required"], json!(["input"]));
        let (_, shape) = object_schema(schema_for::<Address>());
        assert_eq!(shape, Shape::Object);
    }

    /// Every `$ref` in `schema`, `$defs` and their contents included.
    fn refs(schema: &Value, out: &mut Vec<String>) {
        match schema {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        ("const" | "enum" | "default" | "examples", _) => {}
                        (_, other) => refs(other, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
            _ => {}
        }
    }

    /// Each `$ref` of `schema` is `#` or a top-level definition that is
    /// there, as OpenAI's strict mode asks.
    fn assert_refs_resolve(schema: &Value) {
        let mut found = Vec::new();
        refs(schema, &mut found);
        for r in found {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            assert!(
                pointer.is_empty()
                    || (pointer.starts_with("/$defs/") && pointer.matches('/').count() == 2),
                "`{r}` is not a top-level definition: {schema}"
            );
            assert!(schema.pointer(pointer).is_some(), "`{r}` dangles: {schema}");
        }
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Expr {
        Num(f64),
        Add {
            /// The left operand.
            left: Box<Expr>,
            /// The right operand.
            right: Box<Expr>,
        },
        If {
            /// The condition.
            cond: Box<Expr>,
            /// The value if it holds.
            then: Box<Expr>,
            /// The value otherwise.
            otherwise: Box<Expr>,
        },
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Calc {
        /// The expression to evaluate.
        expr: Expr,
        /// Another, to compare with.
        check: Option<Expr>,
    }

    /// A recursive type whose recursive fields have doc comments: each
    /// field is a `$ref` beside a `description`. Inlined, every field held
    /// the whole type again, three times over for `If`, until the depth
    /// guard: it never ended in practice. Now the recursion stays a bare
    /// `$ref`.
    #[test]
    fn recursive_fields_with_doc_comments_are_not_inlined_without_end() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let results: Vec<(Value, Result<Value, Vec<String>>)> =
                [schema_for::<Calc>(), object_schema(schema_for::<Expr>()).0]
                    .into_iter()
                    .map(|schema| {
                        let strict = strict_schema(&schema);
                        (schema, strict)
                    })
                    .collect();
            let _ = tx.send(results);
        });
        let results = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("strict_schema answers within seconds");
        let expr = json!({"If": {
            "cond": {"Num": 1.0},
            "then": {"Add": {"left": {"Num": 1.0}, "right": {"Num": 2.0}}},
            "otherwise": {"Num": 0.0}}});
        let (calc, wrapped) = (&results[0], &results[1]);
        for (schema, strict) in [calc, wrapped] {
            let strict = strict.clone().expect("convertible");
            assert_strict(&strict, "");
            assert_refs_resolve(&strict);
            let args = |expr: &Value| {
                if schema["properties"].get("expr").is_some() {
                    json!({"expr": expr, "check": null})
                } else {
                    json!({ "input": expr })
                }
            };
            assert!(accepts(&strict, &args(&expr)), "{strict}");
            assert!(accepts(schema, &args(&expr)), "{schema}");
            // Deep inside, still no other shape.
            let wrong =
                json!({"Add": {"left": {"Num": 1.0}, "right": {"Add": {"left": {"Num": 1.0}}}}});
            assert!(!accepts(&strict, &args(&wrong)), "{strict}");
        }
        // A field whose type is not recursive keeps its doc comment.
        let strict = calc.1.clone().unwrap();
        assert_eq!(
            strict["properties"]["expr"]["description"],
            json!("The expression to evaluate.")
        );
    }

    /// A recursive enum at the root, wrapped: its strict form refers to
    /// it as a top-level definition, which OpenAI's strict mode takes, not
    /// as `#/properties/input`, which it refuses. Arguments are still read
    /// through the wrapping property.
    #[test]
    fn a_wrapped_recursive_root_is_a_top_level_definition() {
        let (object, shape) = object_schema(schema_for::<Expr>());
        assert_eq!(shape, Shape::Wrapped);
        assert_eq!(
            object["properties"]["input"],
            json!({"$ref": "#/$defs/Expr"})
        );
        assert_refs_resolve(&object);
        let strict = strict_schema(&object).expect("convertible");
        assert_strict(&strict, "");
        assert_refs_resolve(&strict);
        let args = json!({"input": {"Add": {"left": {"Num": 1.0}, "right": {"Num": 2.0}}}});
        assert!(accepts(&strict, &args));
        assert!(accepts(&object, &args));
        serde_json::from_value::<Expr>(Shape::Wrapped.unwrap(args)).expect("fits the type");
        // Nothing recursive, nothing moved.
        let (object, _) = object_schema(schema_for::<Payment>());
        assert!(
            object["properties"]["input"]["oneOf"].is_array(),
            "{object}"
        );

        // A definition of the title's name already there: another name.
        let clash = json!({
            "title": "Node",
            "anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}},
                {"$ref": "#/$defs/Node"}],
            "$defs": {"Node": {"type": "string"}}
        });
        let (object, _) = object_schema(clash);
        assert_eq!(
            object["properties"]["input"],
            json!({"$ref": "#/$defs/Node_1"})
        );
        assert_eq!(object["$defs"]["Node"], json!({"type": "string"}));
        assert_refs_resolve(&object);
        assert!(accepts(&object, &json!({"input": [1, [2, "x"]]})));
        assert!(!accepts(&object, &json!({"input": [true]})));
        // No title: `Input`.
        let untitled =
            json!({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"$ref": "#"}]}});
        let (object, _) = object_schema(untitled);
        assert_eq!(
            object["properties"]["input"],
            json!({"$ref": "#/$defs/Input"})
        );
    }

    /// Beside a recursive `$ref`, a constraint (not an annotation) cannot
    /// be kept: reported, not dropped.
    #[test]
    fn a_recursive_ref_with_constraints_beside_it_is_reported() {
        let schema = json!({
            "type": "object",
            "properties": {"node": {"$ref": "#/$defs/Node"}},
            "required": ["node"],
            "$defs": {"Node": {"type": "object", "required": ["next"], "properties": {
                "next": {"$ref": "#/$defs/Node", "required": ["extra"],
                    "properties": {"extra": {"type": "string"}}}}}}
        });
        let problems = strict_schema(&schema).unwrap_err().join("\n");
        assert!(
            problems.contains("a recursive $ref `#/$defs/Node`"),
            "{problems}"
        );
    }
}
