//! The contract rules: what every `.avsc` file and the manifest must satisfy before a schema
//! reaches the registry.
//!
//! Each rule has a stable id (see [`Rule`]) that appears in every violation, so CI logs and
//! `--json` consumers can tell rules apart. Violations are reported once, in the file that
//! defines the offending record, field or enum; files that only refer to it are not blamed.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::contracts::ContractSet;
use crate::manifest::{Manifest, ManifestError};

/// A rule a contract or the manifest can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The file is JSON.
    Json,
    /// The file defines exactly one named record, at the top level.
    OneRecordPerFile,
    /// No two files define the same name.
    DuplicateName,
    /// Every record has a doc, every field a non-empty doc.
    DocRequired,
    /// Record and enum names are PascalCase.
    TypeName,
    /// Field names are snake_case.
    FieldName,
    /// Enum symbols are UPPER_SNAKE_CASE.
    EnumSymbol,
    /// Namespaces start with `backbone.`.
    Namespace,
    /// No `float` or `double` anywhere: money and quantities are decimals.
    NoFloat,
    /// Decimals are encoded on `bytes`.
    DecimalBytes,
    /// Times are `timestamp-micros`; a `long` field named `*_at` must be one.
    TimestampMicros,
    /// Every enum has a default that is one of its symbols.
    EnumDefault,
    /// Optional fields are unions starting with `"null"` and default to null.
    OptionalField,
    /// Every named type a file refers to is defined by some file.
    UnresolvedReference,
    /// The manifest parses and passes [`Manifest::validate`].
    Manifest,
    /// A manifest topic's contract bundles into valid Avro.
    Bundle,
    /// A schema change breaks the subject's compatibility mode.
    Compatibility,
    /// The registry refused a schema for another reason.
    RegistryRejected,
}

impl Rule {
    /// The kebab-case id printed in reports, e.g. `doc-required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Json => "json",
            Rule::OneRecordPerFile => "one-record-per-file",
            Rule::DuplicateName => "duplicate-name",
            Rule::DocRequired => "doc-required",
            Rule::TypeName => "type-name",
            Rule::FieldName => "field-name",
            Rule::EnumSymbol => "enum-symbol",
            Rule::Namespace => "namespace",
            Rule::NoFloat => "no-float",
            Rule::DecimalBytes => "decimal-bytes",
            Rule::TimestampMicros => "timestamp-micros",
            Rule::EnumDefault => "enum-default",
            Rule::OptionalField => "optional-field",
            Rule::UnresolvedReference => "unresolved-reference",
            Rule::Manifest => "manifest",
            Rule::Bundle => "bundle",
            Rule::Compatibility => "compatibility",
            Rule::RegistryRejected => "registry-rejected",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken rule, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The contract file (relative to the contracts directory) or the manifest.
    pub schema: String,
    /// The manifest topic concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Dotted path of the field (`metadata.trace`), or the manifest key.
    pub field: Option<String>,
    /// Full name of the record or enum concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl Violation {
    /// A violation of `rule` in `schema` with no finer location.
    pub fn new(schema: impl Into<String>, rule: Rule, message: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            topic: None,
            field: None,
            record: None,
            rule,
            message: message.into(),
        }
    }

    /// The same violation, about manifest topic `topic`.
    pub fn in_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The same violation, about field (or manifest key) `field`.
    pub fn at_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same violation, about the named type `record`.
    pub fn in_record(mut self, record: impl Into<String>) -> Self {
        self.record = Some(record.into());
        self
    }
}

impl fmt::Display for Violation {
    /// `usage/usage_event.avsc: field metadata (backbone.usage.UsageEvent): rule doc-required: field has no doc`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.schema)?;
        if let Some(topic) = &self.topic {
            write!(f, ": topic {topic}")?;
        }
        match (&self.field, &self.record) {
            (Some(field), Some(record)) => write!(f, ": field {field} ({record})")?,
            (Some(field), None) => write!(f, ": field {field}")?,
            (None, Some(record)) => write!(f, ": type {record}")?,
            (None, None) => {}
        }
        write!(f, ": rule {}: {}", self.rule, self.message)
    }
}

/// Lints contract files given as (path relative to the contracts directory, text) pairs, and
/// returns the set built from the files that parsed, for the manifest checks.
pub fn lint_contracts(texts: &[(String, String)]) -> (Vec<Violation>, ContractSet) {
    let mut violations = Vec::new();
    let mut parsed: Vec<(&str, Value, String)> = Vec::new();
    let mut defined: BTreeSet<String> = BTreeSet::new();
    for (path, text) in texts {
        let json: Value = match serde_json::from_str(text) {
            Ok(json) => json,
            Err(e) => {
                violations.push(Violation::new(path, Rule::Json, format!("not JSON: {e}")));
                continue;
            }
        };
        let Some(name) = top_level_record(&json) else {
            violations.push(Violation::new(
                path,
                Rule::OneRecordPerFile,
                "expected one named record (`\"type\": \"record\"` with a `name`) at the top level",
            ));
            continue;
        };
        if let Some((first, _, _)) = parsed.iter().find(|(_, _, n)| *n == name) {
            violations.push(
                Violation::new(
                    path,
                    Rule::DuplicateName,
                    format!("`{first}` defines this name already"),
                )
                .in_record(&name),
            );
            continue;
        }
        defined.insert(name.clone());
        parsed.push((path, json, name));
    }
    // Names defined inside files (enums) resolve too.
    for (_, json, _) in &parsed {
        collect_names(json, None, &mut defined);
    }
    for (path, json, _) in &parsed {
        violations.extend(lint_schema(path, json, &defined));
    }
    let good = parsed
        .iter()
        .filter_map(|(path, _, _)| texts.iter().find(|(p, _)| p == path).cloned());
    let set = match ContractSet::from_texts(good) {
        Ok(set) => set,
        Err(e) => {
            violations.push(Violation::new("contracts", Rule::Json, e.to_string()));
            ContractSet::default()
        }
    };
    (violations, set)
}

/// Lints one contract file's JSON; `defined` holds every full name the contract files define.
pub fn lint_schema(path: &str, json: &Value, defined: &BTreeSet<String>) -> Vec<Violation> {
    let mut local = BTreeSet::new();
    collect_names(json, None, &mut local);
    let mut walker = Walker {
        path,
        defined,
        local,
        out: Vec::new(),
    };
    match json.as_object() {
        Some(record) if is_record(record) => {
            let name = walker.named_type(record, None, "", true);
            walker.record(record, &name, "");
        }
        _ => walker.out.push(Violation::new(
            path,
            Rule::OneRecordPerFile,
            "expected one named record at the top level",
        )),
    }
    walker.out
}

/// Lints the manifest: its syntax, [`Manifest::validate`], and that every topic's contract
/// bundles into valid Avro. `label` names the manifest in violations.
pub fn lint_manifest(label: &str, text: &str, contracts: &ContractSet) -> Vec<Violation> {
    let manifest = match Manifest::parse(text) {
        Ok(manifest) => manifest,
        Err(e) => return vec![manifest_violation(label, e)],
    };
    let mut violations = Vec::new();
    if let Err(e) = manifest.validate(contracts) {
        violations.push(manifest_violation(label, e));
    }
    for topic in &manifest.topic {
        let Some(file) = contracts.by_path(&topic.value_schema) else {
            continue;
        };
        if let Err(e) = contracts.schema(&file.name) {
            violations.push(
                Violation::new(&file.path, Rule::Bundle, e.to_string())
                    .in_topic(&topic.name)
                    .in_record(&file.name),
            );
        }
    }
    violations
}

/// A manifest error as a violation of `label`.
pub fn manifest_violation(label: &str, error: ManifestError) -> Violation {
    match error {
        ManifestError::Invalid {
            topic,
            key,
            message,
        } => Violation::new(label, Rule::Manifest, message)
            .in_topic(topic)
            .at_field(key),
        ManifestError::Syntax(message) => Violation::new(label, Rule::Manifest, message),
    }
}

struct Walker<'a> {
    path: &'a str,
    defined: &'a BTreeSet<String>,
    local: BTreeSet<String>,
    out: Vec<Violation>,
}

impl Walker<'_> {
    fn report(&mut self, rule: Rule, field: &str, record: &str, message: impl Into<String>) {
        let mut violation = Violation::new(self.path, rule, message).in_record(record);
        if !field.is_empty() {
            violation = violation.at_field(field);
        }
        self.out.push(violation);
    }

    /// Checks a named type's name and namespace; returns its full name.
    fn named_type(
        &mut self,
        node: &Map<String, Value>,
        namespace: Option<&str>,
        field: &str,
        top_level: bool,
    ) -> String {
        let name = node.get("name").and_then(Value::as_str).unwrap_or_default();
        let (own_ns, short) = match name.rsplit_once('.') {
            Some((ns, short)) => (Some(ns), short),
            None => (node.get("namespace").and_then(Value::as_str), name),
        };
        let ns = own_ns.or(namespace);
        let full = qualify(name, ns);
        let at = full.clone();
        if !is_pascal_case(short) {
            self.report(
                Rule::TypeName,
                field,
                &at,
                format!("type name `{short}` is not PascalCase"),
            );
        }
        if top_level || own_ns.is_some() {
            match ns {
                Some(ns) if ns.starts_with("backbone.") => {}
                Some(ns) => self.report(
                    Rule::Namespace,
                    field,
                    &at,
                    format!("namespace `{ns}` does not start with `backbone.`"),
                ),
                None => self.report(
                    Rule::Namespace,
                    field,
                    &at,
                    "no namespace; use one starting with `backbone.`",
                ),
            }
        }
        full
    }

    fn record(&mut self, node: &Map<String, Value>, full: &str, prefix: &str) {
        let namespace = namespace_of(full);
        if !has_doc(node) {
            self.report(Rule::DocRequired, prefix, full, "record has no doc");
        }
        let Some(fields) = node.get("fields").and_then(Value::as_array) else {
            self.report(
                Rule::OneRecordPerFile,
                prefix,
                full,
                "record has no fields array",
            );
            return;
        };
        for field in fields {
            let Some(field) = field.as_object() else {
                continue;
            };
            let name = field
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            };
            if !is_snake_case(name) {
                self.report(
                    Rule::FieldName,
                    &path,
                    full,
                    format!("field name `{name}` is not snake_case"),
                );
            }
            if !has_doc(field) {
                self.report(Rule::DocRequired, &path, full, "field has no doc");
            }
            let Some(ty) = field.get("type") else {
                continue;
            };
            self.optional(field, ty, &path, full);
            if name.ends_with("_at") {
                self.time_field(ty, &path, full);
            }
            self.type_node(ty, namespace, &path, full);
        }
    }

    /// Optional fields: unions with null start with it and default to null.
    fn optional(&mut self, field: &Map<String, Value>, ty: &Value, path: &str, record: &str) {
        let Some(branches) = ty.as_array() else {
            return;
        };
        if !branches.iter().any(|b| b == "null") {
            return;
        }
        // A null that is not first is reported by `type_node` for every union.
        if branches.first().is_some_and(|b| b == "null")
            && field.get("default") != Some(&Value::Null)
        {
            self.report(
                Rule::OptionalField,
                path,
                record,
                "optional field needs `\"default\": null`",
            );
        }
    }

    /// A `long` field named `*_at` must be a `timestamp-micros`.
    fn time_field(&mut self, ty: &Value, path: &str, record: &str) {
        let branches: Vec<&Value> = match ty {
            Value::Array(branches) => branches.iter().filter(|b| *b != "null").collect(),
            other => vec![other],
        };
        for branch in branches {
            let (base, logical) = match branch {
                Value::String(s) => (s.as_str(), None),
                Value::Object(o) => (
                    o.get("type").and_then(Value::as_str).unwrap_or_default(),
                    o.get("logicalType").and_then(Value::as_str),
                ),
                _ => continue,
            };
            // Other timestamp logical types are reported wherever they appear.
            let timestamp = matches!(
                logical,
                Some(
                    "timestamp-micros"
                        | "timestamp-millis"
                        | "local-timestamp-millis"
                        | "local-timestamp-micros"
                )
            );
            if base == "long" && !timestamp {
                self.report(
                    Rule::TimestampMicros,
                    path,
                    record,
                    "a long field ending in _at must have logicalType timestamp-micros",
                );
            }
        }
    }

    fn type_node(&mut self, node: &Value, namespace: Option<&str>, path: &str, record: &str) {
        match node {
            Value::String(name) => self.reference(name, namespace, path, record),
            Value::Array(branches) => {
                if branches.iter().skip(1).any(|b| b == "null") {
                    self.report(
                        Rule::OptionalField,
                        path,
                        record,
                        "optional union must start with \"null\"",
                    );
                }
                for branch in branches {
                    self.type_node(branch, namespace, path, record);
                }
            }
            Value::Object(object) => self.complex(object, namespace, path, record),
            _ => {}
        }
    }

    fn reference(&mut self, name: &str, namespace: Option<&str>, path: &str, record: &str) {
        if matches!(name, "float" | "double") {
            self.report(
                Rule::NoFloat,
                path,
                record,
                format!("`{name}` is not allowed: use a decimal on bytes for money and quantities"),
            );
            return;
        }
        if is_primitive(name) {
            return;
        }
        let full = qualify(name, namespace);
        if !self.local.contains(&full) && !self.defined.contains(&full) {
            self.report(
                Rule::UnresolvedReference,
                path,
                record,
                format!("no contract file defines `{full}`"),
            );
        }
    }

    fn complex(
        &mut self,
        node: &Map<String, Value>,
        namespace: Option<&str>,
        path: &str,
        record: &str,
    ) {
        let Some(ty) = node.get("type") else {
            return;
        };
        let logical = node.get("logicalType").and_then(Value::as_str);
        match ty.as_str() {
            Some("record" | "error") => {
                let full = self.named_type(node, namespace, path, false);
                self.report(
                    Rule::OneRecordPerFile,
                    path,
                    &full,
                    "record defined inside another file; move it to a file of its own and refer to it by name",
                );
                self.record(node, &full, path);
            }
            Some("enum") => self.enumeration(node, namespace, path),
            Some("fixed") => {
                self.named_type(node, namespace, path, false);
                if logical == Some("decimal") {
                    self.report(
                        Rule::DecimalBytes,
                        path,
                        record,
                        "decimal on fixed: use `\"type\": \"bytes\"`",
                    );
                }
            }
            Some("array") => {
                if let Some(items) = node.get("items") {
                    self.type_node(items, namespace, path, record);
                }
            }
            Some("map") => {
                if let Some(values) = node.get("values") {
                    self.type_node(values, namespace, path, record);
                }
            }
            Some(base) => {
                if logical == Some("decimal") && base != "bytes" {
                    self.report(
                        Rule::DecimalBytes,
                        path,
                        record,
                        format!("decimal on `{base}`: use `\"type\": \"bytes\"`"),
                    );
                }
                if let Some(
                    other @ ("timestamp-millis"
                    | "local-timestamp-millis"
                    | "local-timestamp-micros"),
                ) = logical
                {
                    self.report(
                        Rule::TimestampMicros,
                        path,
                        record,
                        format!("logicalType `{other}`: times are `timestamp-micros` (UTC)"),
                    );
                }
                self.reference(base, namespace, path, record);
            }
            // `{"type": {...}}` or `{"type": [...]}`: a wrapped type.
            None => self.type_node(ty, namespace, path, record),
        }
    }

    fn enumeration(&mut self, node: &Map<String, Value>, namespace: Option<&str>, path: &str) {
        let full = self.named_type(node, namespace, path, false);
        let symbols: Vec<&str> = node
            .get("symbols")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for symbol in &symbols {
            if !is_upper_snake_case(symbol) {
                self.report(
                    Rule::EnumSymbol,
                    path,
                    &full,
                    format!("enum symbol `{symbol}` is not UPPER_SNAKE_CASE"),
                );
            }
        }
        match node.get("default") {
            None => self.report(
                Rule::EnumDefault,
                path,
                &full,
                "enum has no default; add one of its symbols (e.g. UNKNOWN) so readers survive new symbols",
            ),
            Some(Value::String(default)) if symbols.contains(&default.as_str()) => {}
            Some(other) => self.report(
                Rule::EnumDefault,
                path,
                &full,
                format!("enum default {other} is not one of its symbols"),
            ),
        }
    }
}

fn is_record(node: &Map<String, Value>) -> bool {
    matches!(
        node.get("type").and_then(Value::as_str),
        Some("record" | "error")
    ) && node.get("name").and_then(Value::as_str).is_some()
}

/// Full name of the top-level record, when the file is one.
fn top_level_record(json: &Value) -> Option<String> {
    let node = json.as_object().filter(|n| is_record(n))?;
    let name = node.get("name")?.as_str()?;
    Some(qualify(name, node.get("namespace").and_then(Value::as_str)))
}

/// Adds the full names of every named type defined in `node`.
fn collect_names(node: &Value, namespace: Option<&str>, out: &mut BTreeSet<String>) {
    match node {
        Value::Array(items) => items.iter().for_each(|i| collect_names(i, namespace, out)),
        Value::Object(map) => {
            let mut inner_ns = namespace.map(str::to_owned);
            if matches!(
                map.get("type").and_then(Value::as_str),
                Some("record" | "error" | "enum" | "fixed")
            ) {
                if let Some(name) = map.get("name").and_then(Value::as_str) {
                    let ns = map.get("namespace").and_then(Value::as_str).or(namespace);
                    let full = qualify(name, ns);
                    inner_ns = namespace_of(&full).map(str::to_owned);
                    out.insert(full);
                }
            }
            for key in ["type", "items", "values"] {
                if let Some(child) = map.get(key) {
                    collect_names(child, inner_ns.as_deref(), out);
                }
            }
            if let Some(Value::Array(fields)) = map.get("fields") {
                for field in fields {
                    if let Some(ty) = field.get("type") {
                        collect_names(ty, inner_ns.as_deref(), out);
                    }
                }
            }
        }
        _ => {}
    }
}

fn has_doc(node: &Map<String, Value>) -> bool {
    node.get("doc")
        .and_then(Value::as_str)
        .is_some_and(|d| !d.trim().is_empty())
}

fn qualify(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() && !is_primitive(name) => {
            format!("{ns}.{name}")
        }
        _ => name.to_owned(),
    }
}

fn namespace_of(full: &str) -> Option<&str> {
    full.rsplit_once('.').map(|(ns, _)| ns)
}

fn is_primitive(name: &str) -> bool {
    matches!(
        name,
        "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string"
    )
}

fn is_pascal_case(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_snake_case(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.contains("__")
        && !s.ends_with('_')
}

fn is_upper_snake_case(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !s.contains("__")
        && !s.ends_with('_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record that passes every rule; tests break one thing at a time.
    fn good() -> Value {
        json!({
            "type": "record",
            "name": "Sample",
            "namespace": "backbone.test",
            "doc": "A sample.",
            "fields": [
                {"name": "metadata", "type": "backbone.common.EventMetadata", "doc": "Envelope."},
                {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 6}, "doc": "Money."},
                {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": "When."},
                {"name": "note", "type": ["null", "string"], "default": null, "doc": "Optional."},
                {"name": "status", "type": {"type": "enum", "name": "SampleStatus", "symbols": ["ACTIVE", "UNKNOWN"], "default": "UNKNOWN"}, "doc": "State."}
            ]
        })
    }

    fn lint(json: &Value) -> Vec<Violation> {
        let defined = BTreeSet::from(["backbone.common.EventMetadata".to_owned()]);
        lint_schema("test/sample.avsc", json, &defined)
    }

    /// Sets `key` of field `index` to `value` (`Value::Null` removes it).
    fn with_field(index: usize, key: &str, value: Value) -> Value {
        let mut json = good();
        let field = json["fields"][index].as_object_mut().unwrap();
        if value.is_null() {
            field.remove(key);
        } else {
            field.insert(key.to_owned(), value);
        }
        json
    }

    fn only(violations: &[Violation], rule: Rule, field: Option<&str>) {
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].rule, rule, "{violations:#?}");
        assert_eq!(violations[0].field.as_deref(), field, "{violations:#?}");
        assert_eq!(violations[0].schema, "test/sample.avsc");
    }

    #[test]
    fn a_good_record_is_clean() {
        assert_eq!(lint(&good()), vec![]);
    }

    #[test]
    fn missing_or_empty_field_doc() {
        only(
            &lint(&with_field(1, "doc", Value::Null)),
            Rule::DocRequired,
            Some("amount"),
        );
        only(
            &lint(&with_field(1, "doc", json!("  "))),
            Rule::DocRequired,
            Some("amount"),
        );
        let mut json = good();
        json.as_object_mut().unwrap().remove("doc");
        let found = lint(&json);
        only(&found, Rule::DocRequired, None);
        assert_eq!(found[0].record.as_deref(), Some("backbone.test.Sample"));
    }

    #[test]
    fn float_and_double_anywhere() {
        only(
            &lint(&with_field(1, "type", json!("double"))),
            Rule::NoFloat,
            Some("amount"),
        );
        only(
            &lint(&with_field(3, "type", json!(["null", {"type": "float"}]))),
            Rule::NoFloat,
            Some("note"),
        );
        only(
            &lint(&with_field(
                1,
                "type",
                json!({"type": "array", "items": "float"}),
            )),
            Rule::NoFloat,
            Some("amount"),
        );
        only(
            &lint(&with_field(
                1,
                "type",
                json!({"type": "fixed", "name": "Money", "size": 16, "logicalType": "decimal", "precision": 18, "scale": 6}),
            )),
            Rule::DecimalBytes,
            Some("amount"),
        );
    }

    #[test]
    fn naming() {
        let found = lint(&with_field(3, "name", json!("shortNote")));
        only(&found, Rule::FieldName, Some("shortNote"));
        assert!(found[0].message.contains("`shortNote`"), "{found:?}");
        let mut json = good();
        json["name"] = json!("sample_record");
        only(&lint(&json), Rule::TypeName, None);
        let found = lint(&with_field(
            4,
            "type",
            json!({"type": "enum", "name": "SampleStatus", "symbols": ["Active", "UNKNOWN"], "default": "UNKNOWN"}),
        ));
        only(&found, Rule::EnumSymbol, Some("status"));
        assert_eq!(
            found[0].record.as_deref(),
            Some("backbone.test.SampleStatus")
        );
    }

    #[test]
    fn namespace_must_start_with_backbone() {
        let mut json = good();
        json["namespace"] = json!("com.example");
        let found = lint(&json);
        // The unqualified reference now resolves in the wrong namespace too, so look only
        // for the namespace rule.
        assert!(
            found
                .iter()
                .any(|v| v.rule == Rule::Namespace && v.message.contains("`com.example`")),
            "{found:#?}"
        );
        let mut json = good();
        json.as_object_mut().unwrap().remove("namespace");
        assert!(lint(&json).iter().any(|v| v.rule == Rule::Namespace));
    }

    #[test]
    fn enum_needs_a_default_among_its_symbols() {
        let status = |default: Option<&str>| {
            let mut e =
                json!({"type": "enum", "name": "SampleStatus", "symbols": ["ACTIVE", "UNKNOWN"]});
            if let Some(d) = default {
                e["default"] = json!(d);
            }
            with_field(4, "type", e)
        };
        only(&lint(&status(None)), Rule::EnumDefault, Some("status"));
        only(
            &lint(&status(Some("MISSING"))),
            Rule::EnumDefault,
            Some("status"),
        );
    }

    #[test]
    fn optional_fields_start_with_null_and_default_to_null() {
        only(
            &lint(&with_field(3, "default", Value::Null)),
            Rule::OptionalField,
            Some("note"),
        );
        only(
            &lint(&with_field(3, "default", json!("none"))),
            Rule::OptionalField,
            Some("note"),
        );
        only(
            &lint(&with_field(3, "type", json!(["string", "null"]))),
            Rule::OptionalField,
            Some("note"),
        );
    }

    #[test]
    fn long_at_fields_are_timestamp_micros() {
        only(
            &lint(&with_field(2, "type", json!("long"))),
            Rule::TimestampMicros,
            Some("created_at"),
        );
        only(
            &lint(&with_field(
                2,
                "type",
                json!({"type": "long", "logicalType": "timestamp-millis"}),
            )),
            Rule::TimestampMicros,
            Some("created_at"),
        );
        let mut json = with_field(2, "type", json!(["null", "long"]));
        json["fields"][2]["default"] = Value::Null;
        only(&lint(&json), Rule::TimestampMicros, Some("created_at"));
    }

    #[test]
    fn references_resolve_and_records_stay_in_their_own_file() {
        only(
            &lint(&with_field(0, "type", json!("backbone.common.Missing"))),
            Rule::UnresolvedReference,
            Some("metadata"),
        );
        let found = lint(&with_field(
            0,
            "type",
            json!({"type": "record", "name": "Inner", "doc": "Inline.", "fields": [
                {"name": "x", "type": "string", "doc": "X."}
            ]}),
        ));
        only(&found, Rule::OneRecordPerFile, Some("metadata"));
    }

    #[test]
    fn nested_field_paths_name_the_inner_record() {
        // An inline record breaks one-record-per-file; its own fields are still linted,
        // addressed through the outer field.
        let found = lint(&with_field(
            0,
            "type",
            json!({"type": "record", "name": "Inner", "doc": "Inline.", "fields": [
                {"name": "x", "type": "string"}
            ]}),
        ));
        let doc = found.iter().find(|v| v.rule == Rule::DocRequired).unwrap();
        assert_eq!(doc.field.as_deref(), Some("metadata.x"));
        assert_eq!(doc.record.as_deref(), Some("backbone.test.Inner"));
        assert_eq!(
            doc.to_string(),
            "test/sample.avsc: field metadata.x (backbone.test.Inner): rule doc-required: field has no doc"
        );
    }

    #[test]
    fn files_that_are_not_one_record_or_define_a_name_twice() {
        let texts = vec![
            ("a.avsc".to_owned(), "{not json".to_owned()),
            (
                "b.avsc".to_owned(),
                r#"{"type": "enum", "name": "E", "symbols": ["A"]}"#.to_owned(),
            ),
            ("c.avsc".to_owned(), good().to_string()),
            ("d.avsc".to_owned(), good().to_string()),
        ];
        let (found, set) = lint_contracts(&texts);
        let rules: Vec<(&str, Rule)> = found.iter().map(|v| (v.schema.as_str(), v.rule)).collect();
        assert!(rules.contains(&("a.avsc", Rule::Json)), "{found:#?}");
        assert!(
            rules.contains(&("b.avsc", Rule::OneRecordPerFile)),
            "{found:#?}"
        );
        assert!(
            rules.contains(&("d.avsc", Rule::DuplicateName)),
            "{found:#?}"
        );
        assert!(set.by_path("c.avsc").is_some());
    }

    #[test]
    fn the_repository_contracts_and_manifest_lint_clean() {
        let texts: Vec<(String, String)> = crate::CONTRACT_FILES
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect();
        let (found, set) = lint_contracts(&texts);
        assert_eq!(found, vec![], "{found:#?}");
        assert_eq!(set.files().count(), texts.len());
        let found = lint_manifest("manifest.toml", crate::manifest::EMBEDDED_MANIFEST, &set);
        assert_eq!(found, vec![], "{found:#?}");
    }

    #[test]
    fn manifest_errors_name_topic_and_key() {
        let set = ContractSet::embedded().unwrap();
        let text = crate::manifest::EMBEDDED_MANIFEST.replacen(
            "dlq = \"master.customer-accounts.dlq\"",
            "dlq = \"elsewhere\"",
            1,
        );
        let found = lint_manifest("manifest.toml", &text, &set);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].topic.as_deref(), Some("master.customer-accounts"));
        assert_eq!(found[0].field.as_deref(), Some("dlq"));
        assert_eq!(found[0].rule, Rule::Manifest);
        let found = lint_manifest("manifest.toml", "[[topic]]\nname = 1\n", &set);
        assert_eq!(found[0].rule, Rule::Manifest);
    }
}
