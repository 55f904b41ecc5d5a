//! A strict validator of rendered resources against the `openAPIV3Schema` of upstream CRDs.
//!
//! It checks what the API server checks structurally, and is stricter where that protects us:
//! unknown fields are errors (the API server would silently prune them), `required` fields must
//! be present and not null, `enum`, `type`, `pattern`, lengths, bounds, item counts,
//! `x-kubernetes-int-or-string`, `x-kubernetes-list-type: set|map` uniqueness, and the
//! `anyOf`/`oneOf`/`allOf`/`not` value constraints. `metadata` is checked against the object
//! meta rules (name, namespace, string labels and annotations).
//!
//! Not checked: `x-kubernetes-validations` (CEL rules; tests that depend on one say so) and
//! `format` (it only annotates strings here).

use multimesh_core::locks::lock;
use multimesh_core::names::{is_dns_label, is_dns_subdomain};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;

use regex::Regex;
use serde_json::Value;

/// One way a resource breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The schemas of a set of CRDs, by `apiVersion` and kind.
#[derive(Default)]
pub struct Schemas {
    by_kind: BTreeMap<(String, String), Value>,
    regexes: Mutex<HashMap<String, Option<Regex>>>,
}

impl Schemas {
    /// No schemas yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every served version of every `CustomResourceDefinition` in a (multi-document)
    /// YAML text; other documents are skipped. Returns how many (apiVersion, kind) pairs were
    /// added.
    pub fn add_crds(&mut self, yaml: &str) -> Result<usize, String> {
        let mut added = 0;
        for doc in serde_norway::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
            if v.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                continue;
            }
            let spec = &v["spec"];
            let group = spec["group"].as_str().ok_or("CRD without spec.group")?;
            let kind = spec["names"]["kind"]
                .as_str()
                .ok_or("CRD without spec.names.kind")?;
            for ver in spec["versions"].as_array().into_iter().flatten() {
                let name = ver["name"].as_str().ok_or("CRD version without a name")?;
                if ver.get("served").and_then(Value::as_bool) == Some(false) {
                    continue;
                }
                let schema = ver["schema"]["openAPIV3Schema"].clone();
                if schema.is_null() {
                    continue;
                }
                self.by_kind
                    .insert((format!("{group}/{name}"), kind.to_string()), schema);
                added += 1;
            }
        }
        Ok(added)
    }

    /// Whether a schema for this apiVersion and kind is known.
    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        self.by_kind
            .contains_key(&(api_version.to_string(), kind.to_string()))
    }

    /// Every known (apiVersion, kind).
    pub fn kinds(&self) -> impl Iterator<Item = &(String, String)> {
        self.by_kind.keys()
    }

    /// Validates one resource; an unknown apiVersion/kind is itself a violation.
    pub fn validate(&self, obj: &Value) -> Result<(), Vec<Violation>> {
        let api = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let Some(schema) = self.by_kind.get(&(api.to_string(), kind.to_string())) else {
            return Err(vec![Violation {
                path: String::new(),
                message: format!("no schema for apiVersion {api:?} kind {kind:?}"),
            }]);
        };
        let mut out = Vec::new();
        let Some(map) = obj.as_object() else {
            return Err(vec![Violation {
                path: String::new(),
                message: "not an object".into(),
            }]);
        };
        for (k, v) in map {
            match k.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => check_metadata(v, &mut out),
                _ => match schema["properties"].get(k) {
                    Some(s) => self.check(s, v, k, true, &mut out),
                    None => out.push(Violation {
                        path: k.clone(),
                        message: "unknown field".into(),
                    }),
                },
            }
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            if let Some(r) = r.as_str()
                && map.get(r).is_none_or(Value::is_null)
            {
                out.push(Violation {
                    path: r.to_string(),
                    message: "required field is missing".into(),
                });
            }
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }

    fn pattern_matches(&self, pattern: &str, s: &str) -> bool {
        let mut cache = lock(&self.regexes);
        let re = cache
            .entry(pattern.to_string())
            .or_insert_with(|| Regex::new(pattern).ok());
        // A pattern the regex crate cannot compile (none in the current schemas) is not
        // checked rather than failing every value.
        re.as_ref().is_none_or(|re| re.is_match(s))
    }

    /// Checks `v` against `s`; `strict` reports unknown fields (off inside `anyOf`-style
    /// branches, which only constrain values).
    fn check(&self, s: &Value, v: &Value, path: &str, strict: bool, out: &mut Vec<Violation>) {
        let mut err = |message: String| {
            out.push(Violation {
                path: path.to_string(),
                message,
            })
        };
        if v.is_null() {
            if s["nullable"].as_bool() != Some(true) {
                err("null is not allowed".into());
            }
            return;
        }
        let int_or_string = s["x-kubernetes-int-or-string"].as_bool() == Some(true);
        if int_or_string {
            if !(v.is_i64() || v.is_u64() || v.is_string()) {
                err(format!(
                    "expected an integer or a string, got {}",
                    kind_of(v)
                ));
                return;
            }
        } else if let Some(t) = s["type"].as_str() {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                _ => true,
            };
            if !ok {
                err(format!("expected {t}, got {}", kind_of(v)));
                return;
            }
        }
        if let Some(allowed) = s["enum"].as_array()
            && !allowed.contains(v)
        {
            err(format!(
                "{v} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
        match v {
            Value::String(x) => {
                let n = x.chars().count() as u64;
                if let Some(max) = s["maxLength"].as_u64()
                    && n > max
                {
                    err(format!("longer than {max} characters"));
                }
                if let Some(min) = s["minLength"].as_u64()
                    && n < min
                {
                    err(format!("shorter than {min} characters"));
                }
                if let Some(p) = s["pattern"].as_str()
                    && !self.pattern_matches(p, x)
                {
                    err(format!("{x:?} does not match the pattern {p:?}"));
                }
            }
            Value::Number(x) => {
                let x = x.as_f64().unwrap_or(f64::NAN);
                if let Some(max) = s["maximum"].as_f64() {
                    let excl = s["exclusiveMaximum"].as_bool() == Some(true);
                    if x > max || (excl && x == max) {
                        err(format!("{x} is above the maximum {max}"));
                    }
                }
                if let Some(min) = s["minimum"].as_f64() {
                    let excl = s["exclusiveMinimum"].as_bool() == Some(true);
                    if x < min || (excl && x == min) {
                        err(format!("{x} is below the minimum {min}"));
                    }
                }
            }
            Value::Array(items) => {
                if let Some(max) = s["maxItems"].as_u64()
                    && items.len() as u64 > max
                {
                    err(format!("more than {max} items"));
                }
                if let Some(min) = s["minItems"].as_u64()
                    && (items.len() as u64) < min
                {
                    err(format!("fewer than {min} items"));
                }
                match s["x-kubernetes-list-type"].as_str() {
                    Some("set") => {
                        for (i, x) in items.iter().enumerate() {
                            if items[..i].contains(x) {
                                err(format!("item {i} repeats an earlier item of a set"));
                            }
                        }
                    }
                    Some("map") => {
                        let keys: Vec<&str> = s["x-kubernetes-list-map-keys"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        let key_of =
                            |x: &Value| keys.iter().map(|k| x[*k].clone()).collect::<Vec<_>>();
                        for (i, x) in items.iter().enumerate() {
                            if items[..i].iter().any(|y| key_of(y) == key_of(x)) {
                                err(format!("item {i} repeats the map keys {keys:?}"));
                            }
                        }
                    }
                    _ => {}
                }
                if let Some(item) = s.get("items") {
                    for (i, x) in items.iter().enumerate() {
                        self.check(item, x, &format!("{path}[{i}]"), strict, out);
                    }
                }
            }
            Value::Object(map) => {
                let props = s["properties"].as_object();
                let additional = s.get("additionalProperties");
                let preserve = s["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
                for (k, x) in map {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if let Some(ps) = props.and_then(|p| p.get(k)) {
                        self.check(ps, x, &sub, strict, out);
                    } else if let Some(a) = additional.filter(|a| a.is_object()) {
                        self.check(a, x, &sub, strict, out);
                    } else if strict && !preserve && additional != Some(&Value::Bool(true)) {
                        out.push(Violation {
                            path: sub,
                            message: "unknown field".into(),
                        });
                    }
                }
                for r in s["required"].as_array().into_iter().flatten() {
                    if let Some(r) = r.as_str()
                        && map.get(r).is_none_or(Value::is_null)
                    {
                        out.push(Violation {
                            path: if path.is_empty() {
                                r.to_string()
                            } else {
                                format!("{path}.{r}")
                            },
                            message: "required field is missing".into(),
                        });
                    }
                }
                if let Some(max) = s["maxProperties"].as_u64()
                    && map.len() as u64 > max
                {
                    out.push(Violation {
                        path: path.to_string(),
                        message: format!("more than {max} properties"),
                    });
                }
                if let Some(min) = s["minProperties"].as_u64()
                    && (map.len() as u64) < min
                {
                    out.push(Violation {
                        path: path.to_string(),
                        message: format!("fewer than {min} properties"),
                    });
                }
            }
            _ => {}
        }
        self.check_combinators(s, v, path, out);
    }

    fn check_combinators(&self, s: &Value, v: &Value, path: &str, out: &mut Vec<Violation>) {
        let passes = |branch: &Value| {
            let mut scratch = Vec::new();
            self.check(branch, v, path, false, &mut scratch);
            scratch.is_empty()
        };
        let mut err = |message: String| {
            out.push(Violation {
                path: path.to_string(),
                message,
            })
        };
        if let Some(any) = s["anyOf"].as_array()
            && !any.iter().any(passes)
        {
            err(format!(
                "matches none of the {} anyOf alternatives",
                any.len()
            ));
        }
        if let Some(one) = s["oneOf"].as_array() {
            let n = one.iter().filter(|b| passes(b)).count();
            if n != 1 {
                err(format!(
                    "matches {n} of the oneOf alternatives, exactly 1 is required"
                ));
            }
        }
        if let Some(all) = s["allOf"].as_array() {
            for (i, b) in all.iter().enumerate() {
                if !passes(b) {
                    err(format!("fails allOf alternative {i}"));
                }
            }
        }
        if let Some(not) = s.get("not")
            && passes(not)
        {
            err("matches a schema it must not match (not)".into());
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Object metadata: a DNS-1123 name, a DNS-label namespace, string labels and annotations, and
/// only fields a rendered resource may carry.
fn check_metadata(m: &Value, out: &mut Vec<Violation>) {
    let mut err = |path: &str, message: String| {
        out.push(Violation {
            path: format!("metadata{path}"),
            message,
        })
    };
    let Some(map) = m.as_object() else {
        err("", "expected object".into());
        return;
    };
    match map.get("name").and_then(Value::as_str) {
        Some(n) if is_dns_subdomain(n) => {}
        Some(n) => err(".name", format!("{n:?} is not a DNS-1123 subdomain")),
        None => err(".name", "required field is missing".into()),
    }
    for (k, v) in map {
        match k.as_str() {
            "name" => {}
            "namespace" => match v.as_str() {
                Some(n) if is_dns_label(n) => {}
                _ => err(".namespace", format!("{v} is not a DNS-1123 label")),
            },
            "labels" | "annotations" => {
                for (lk, lv) in v.as_object().into_iter().flatten() {
                    if !lv.is_string() {
                        err(&format!(".{k}.{lk}"), "expected string".into());
                    }
                    if k == "labels" && lv.as_str().is_some_and(|s| s.len() > 63) {
                        err(
                            &format!(".{k}.{lk}"),
                            "label values are at most 63 characters".into(),
                        );
                    }
                }
            }
            other => err(
                &format!(".{other}"),
                "not a field rendered resources may set".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
spec:
  group: example.io
  names: {kind: Widget}
  versions:
  - name: v1
    served: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              mode: {type: string, enum: [a, b]}
              port: {x-kubernetes-int-or-string: true}
              tags: {type: array, items: {type: string}, x-kubernetes-list-type: set}
              ref:
                type: object
                properties: {name: {type: string}, group: {type: string}}
                oneOf:
                - required: [name]
                - required: [group]
              free: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

    fn schemas() -> Schemas {
        let mut s = Schemas::new();
        assert_eq!(s.add_crds(CRD).unwrap(), 1);
        s
    }

    fn widget(spec: Value) -> Value {
        json!({"apiVersion": "example.io/v1", "kind": "Widget",
               "metadata": {"name": "w", "namespace": "ns"}, "spec": spec})
    }

    fn errors(v: Value) -> Vec<String> {
        match schemas().validate(&v) {
            Ok(()) => vec![],
            Err(e) => e.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn a_valid_resource_passes() {
        assert_eq!(
            errors(widget(
                json!({"size": 3, "mode": "a", "port": "http", "tags": ["x", "y"],
                                 "ref": {"name": "n"}, "free": {"any": {"thing": 1}}})
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_kind_of_violation_is_reported_with_its_path() {
        assert_eq!(
            errors(widget(json!({}))),
            ["spec.size: required field is missing"]
        );
        assert_eq!(
            errors(widget(json!({"size": 11}))),
            ["spec.size: 11 is above the maximum 10"]
        );
        assert_eq!(
            errors(widget(json!({"size": 1, "mode": "c"}))),
            ["spec.mode: \"c\" is not one of [\"a\",\"b\"]"]
        );
        assert_eq!(
            errors(widget(json!({"size": 1, "extra": true}))),
            ["spec.extra: unknown field"]
        );
        assert_eq!(
            errors(widget(json!({"size": 1, "port": 1.5}))),
            ["spec.port: expected an integer or a string, got number"]
        );
        assert_eq!(
            errors(widget(json!({"size": 1, "tags": ["x", "x"]}))),
            ["spec.tags: item 1 repeats an earlier item of a set"]
        );
        assert_eq!(
            errors(widget(
                json!({"size": 1, "ref": {"name": "n", "group": "g"}})
            )),
            ["spec.ref: matches 2 of the oneOf alternatives, exactly 1 is required"]
        );
        assert_eq!(
            errors(widget(json!({"size": "1"}))),
            ["spec.size: expected integer, got string"]
        );
        let mut bad_meta = widget(json!({"size": 1}));
        bad_meta["metadata"]["name"] = json!("Bad_Name");
        assert_eq!(
            errors(bad_meta),
            ["metadata.name: \"Bad_Name\" is not a DNS-1123 subdomain"]
        );
        let mut unknown_kind = widget(json!({"size": 1}));
        unknown_kind["kind"] = json!("Gadget");
        assert_eq!(
            errors(unknown_kind),
            [": no schema for apiVersion \"example.io/v1\" kind \"Gadget\""]
        );
    }
}
