//! `check`: is each manifest topic's contract a permitted evolution of what is deployed, under
//! its subject's compatibility mode? "Deployed" is either a git ref (no registry needed, for
//! CI) or the versions a registry holds.

use apache_avro::Schema;
use backbone_compat::{CompatibilityMode, Direction};
use serde::Serialize;
use serde_json::Value;

use super::git::GitTree;
use super::registry::RegistryClient;
use super::{CliError, Detail, Inputs, Report, DEFAULT_CONTRACTS_DIR, DEFAULT_MANIFEST};
use backbone_schemas::contracts::ContractSet;
use backbone_schemas::lint::{Rule, Violation};
use backbone_schemas::manifest::{Manifest, TopicContract};

/// What `check` compared.
#[derive(Debug, Clone, Serialize)]
pub struct CheckSummary {
    /// What the contracts were compared with: `git ref <ref>` or `registry <url>`.
    pub against: String,
    /// One entry per manifest topic.
    pub subjects: Vec<SubjectCheck>,
}

impl CheckSummary {
    /// One line per subject.
    pub fn lines(&self) -> Vec<String> {
        self.subjects
            .iter()
            .map(|s| {
                let status = match s.status {
                    CheckStatus::New => "new subject, nothing to compare with".to_owned(),
                    CheckStatus::Unchanged => "unchanged".to_owned(),
                    CheckStatus::Compatible => format!("compatible ({})", s.mode),
                    CheckStatus::Incompatible => format!("incompatible ({})", s.mode),
                    CheckStatus::Invalid => "not checked: contract does not bundle".to_owned(),
                };
                match &s.note {
                    Some(note) => format!("{} ({}): {status}; {note}", s.subject, s.schema),
                    None => format!("{} ({}): {status}", s.subject, s.schema),
                }
            })
            .collect()
    }
}

/// The result for one subject.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectCheck {
    /// Manifest topic.
    pub topic: String,
    /// Registry subject of its values.
    pub subject: String,
    /// Contract file, relative to the contracts directory.
    pub schema: String,
    /// Compatibility mode applied.
    pub mode: CompatibilityMode,
    /// Outcome.
    pub status: CheckStatus,
    /// Anything else worth knowing (e.g. the registry's mode differs from the manifest's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Outcome for one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    /// Nothing deployed yet: any schema is fine.
    New,
    /// Same schema as the latest deployed one.
    Unchanged,
    /// Changed within the mode's rules.
    Compatible,
    /// Changed against the mode's rules; the violations say where.
    Incompatible,
    /// The contract does not bundle into valid Avro.
    Invalid,
}

/// One deployed version to compare with.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// How messages name it: "version 3", "`main`".
    pub label: String,
    /// Its JSON, to name fields in messages.
    pub json: Value,
    /// Parsed.
    pub schema: Schema,
}

/// Checks every manifest topic's contract against its contract at git ref `reference`, under
/// the manifest's mode, with that contract as the only existing version.
pub fn check_against_git(inputs: &Inputs, reference: &str) -> Result<Report, CliError> {
    let mut summary = CheckSummary {
        against: format!("git ref {reference}"),
        subjects: Vec::new(),
    };
    let (set, manifest) = match inputs.contracts_and_manifest() {
        Ok(loaded) => loaded,
        Err(violations) => return Ok(Report::new(violations, Detail::Check(summary))),
    };
    let tree = GitTree::open(reference)?;
    let contracts_rel = match &inputs.contracts_dir {
        Some(dir) => tree.relative(dir)?,
        None => DEFAULT_CONTRACTS_DIR.to_owned(),
    };
    let manifest_rel = match &inputs.manifest_path {
        Some(path) => tree.relative(path)?,
        None => DEFAULT_MANIFEST.to_owned(),
    };
    let at_ref = |path: &str| format!("{reference}:{path}");

    let (listed, prefix) = if contracts_rel.is_empty() {
        (tree.files_under(".")?, String::new())
    } else {
        (
            tree.files_under(&contracts_rel)?,
            format!("{contracts_rel}/"),
        )
    };
    let mut old_texts = Vec::new();
    for path in listed.iter().filter(|p| p.ends_with(".avsc")) {
        if let Some(text) = tree.read(path)? {
            let relative = path.strip_prefix(&prefix).unwrap_or(path).to_owned();
            old_texts.push((relative, text));
        }
    }
    let old_set = ContractSet::from_texts(old_texts).map_err(|e| CliError::Read {
        path: at_ref(&contracts_rel),
        message: e.to_string(),
    })?;
    // The manifest at the ref says which contract each topic used then; without one, a
    // topic's contract is looked up under its current path.
    let old_manifest = match tree.read(&manifest_rel)? {
        Some(text) => Some(Manifest::parse(&text).map_err(|e| CliError::Read {
            path: at_ref(&manifest_rel),
            message: e.to_string(),
        })?),
        None => None,
    };

    let mut violations = Vec::new();
    for topic in &manifest.topic {
        let old_path = match &old_manifest {
            Some(old) => old.topic(&topic.name).map(|t| t.value_schema.clone()),
            None => Some(topic.value_schema.clone()),
        };
        let mut deployed = Vec::new();
        if let Some(file) = old_path.and_then(|p| old_set.by_path(&p)) {
            let bundle_error = |e: backbone_schemas::ContractError| CliError::Read {
                path: at_ref(&format!("{prefix}{}", file.path)),
                message: e.to_string(),
            };
            deployed.push(Deployed {
                label: format!("`{reference}`"),
                json: old_set.bundled(&file.name).map_err(bundle_error)?,
                schema: old_set.schema(&file.name).map_err(bundle_error)?,
            });
        }
        let (check, found) = check_topic(&set, topic, &deployed, topic.compatibility, None);
        summary.subjects.push(check);
        violations.extend(found);
    }
    Ok(Report::new(violations, Detail::Check(summary)))
}

/// Checks every manifest topic's contract against the versions of its subject in the
/// registry, under the subject's mode there (the manifest's mode when it has none).
pub async fn check_against_registry(
    inputs: &Inputs,
    client: &RegistryClient,
) -> Result<Report, CliError> {
    let mut summary = CheckSummary {
        against: format!("registry {}", client.url()),
        subjects: Vec::new(),
    };
    let (set, manifest) = match inputs.contracts_and_manifest() {
        Ok(loaded) => loaded,
        Err(violations) => return Ok(Report::new(violations, Detail::Check(summary))),
    };
    let mut violations = Vec::new();
    for topic in &manifest.topic {
        let subject = &topic.value_subject;
        let mut deployed = Vec::new();
        for version in client.versions(subject).await?.unwrap_or_default() {
            let text = client.version_schema(subject, version).await?;
            let unusable = |message: String| CliError::Registry {
                url: client.url().to_owned(),
                message: format!("subject `{subject}` version {version}: {message}"),
            };
            let json: Value =
                serde_json::from_str(&text).map_err(|e| unusable(format!("not JSON: {e}")))?;
            let schema = Schema::parse(&json).map_err(|e| unusable(format!("not Avro: {e}")))?;
            deployed.push(Deployed {
                label: format!("version {version}"),
                json,
                schema,
            });
        }
        let registry_mode = client.subject_mode(subject, true).await?;
        let mode = registry_mode.unwrap_or(topic.compatibility);
        // The mode only matters once something is registered.
        let note = (mode != topic.compatibility && !deployed.is_empty()).then(|| {
            format!(
                "the registry's mode {mode} differs from the manifest's {}; `contracts register` sets it",
                topic.compatibility
            )
        });
        let (check, found) = check_topic(&set, topic, &deployed, mode, note);
        summary.subjects.push(check);
        violations.extend(found);
    }
    Ok(Report::new(violations, Detail::Check(summary)))
}

/// Checks one topic's contract against `deployed` (oldest first).
fn check_topic(
    set: &ContractSet,
    topic: &TopicContract,
    deployed: &[Deployed],
    mode: CompatibilityMode,
    note: Option<String>,
) -> (SubjectCheck, Vec<Violation>) {
    let mut check = SubjectCheck {
        topic: topic.name.clone(),
        subject: topic.value_subject.clone(),
        schema: topic.value_schema.clone(),
        mode,
        status: CheckStatus::New,
        note,
    };
    let Some(file) = set.by_path(&topic.value_schema) else {
        // `Manifest::validate` has made sure every topic's file exists.
        check.status = CheckStatus::Invalid;
        return (check, Vec::new());
    };
    let candidate = set
        .bundled(&file.name)
        .and_then(|json| set.schema(&file.name).map(|schema| (json, schema)));
    let (json, schema) = match candidate {
        Ok(candidate) => candidate,
        Err(e) => {
            check.status = CheckStatus::Invalid;
            let violation = Violation::new(&file.path, Rule::Bundle, e.to_string())
                .in_topic(&topic.name)
                .in_record(&file.name);
            return (check, vec![violation]);
        }
    };
    let Some(latest) = deployed.last() else {
        return (check, Vec::new());
    };
    if latest.json == json {
        check.status = CheckStatus::Unchanged;
        return (check, Vec::new());
    }
    let existing: Vec<Schema> = deployed.iter().map(|d| d.schema.clone()).collect();
    let errors = backbone_compat::check(mode, &schema, &existing);
    check.status = if errors.is_empty() {
        CheckStatus::Compatible
    } else {
        CheckStatus::Incompatible
    };
    let mut violations = Vec::new();
    for error in errors {
        let Some(old) = deployed.get(error.existing_index) else {
            continue;
        };
        // Paths point into the reader schema: the new one for BACKWARD, the old for FORWARD.
        let reader = match error.direction {
            Direction::Backward => &json,
            Direction::Forward => &old.json,
        };
        let what = match error.direction {
            Direction::Backward => "the new schema cannot read data written with",
            Direction::Forward => "readers of",
        };
        for found in &error.incompatibilities {
            let (field, record) = locate(reader, &found.path);
            let message = match error.direction {
                Direction::Backward => format!(
                    "{mode}: {what} {}: {} ({})",
                    old.label, found.message, found.kind
                ),
                Direction::Forward => format!(
                    "{mode}: {what} {} cannot read data written with the new schema: {} ({})",
                    old.label, found.message, found.kind
                ),
            };
            let mut violation =
                Violation::new(&file.path, Rule::Compatibility, message).in_topic(&topic.name);
            if let Some(field) = field {
                violation = violation.at_field(field);
            }
            if let Some(record) = record {
                violation = violation.in_record(record);
            }
            violations.push(violation);
        }
    }
    (check, violations)
}

/// The dotted field path and enclosing record named by a compatibility path such as
/// `/fields/0/type/fields/2/type/1` in the schema JSON `schema`.
fn locate(schema: &Value, pointer: &str) -> (Option<String>, Option<String>) {
    let tokens: Vec<&str> = pointer.split('/').filter(|t| !t.is_empty()).collect();
    let mut node = schema;
    let mut namespace: Option<String> = None;
    let mut record = record_name(node, None);
    let mut fields: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        match node {
            Value::Object(map) if *token == "fields" => {
                if let Some(name) = &record {
                    namespace = name.rsplit_once('.').map(|(ns, _)| ns.to_owned());
                }
                let Some(field) = tokens
                    .get(i + 1)
                    .and_then(|index| index.parse::<usize>().ok())
                    .and_then(|index| map.get("fields")?.get(index))
                else {
                    break;
                };
                if let Some(name) = field.get("name").and_then(Value::as_str) {
                    fields.push(name.to_owned());
                }
                node = field;
                i += 2;
            }
            Value::Object(map) if matches!(*token, "type" | "items" | "values") => {
                let Some(child) = map.get(*token) else {
                    break;
                };
                if let Some(name) = record_name(child, namespace.as_deref()) {
                    record = Some(name);
                }
                node = child;
                i += 1;
            }
            Value::Array(branches) => {
                let Some(child) = token.parse::<usize>().ok().and_then(|i| branches.get(i)) else {
                    break;
                };
                if let Some(name) = record_name(child, namespace.as_deref()) {
                    record = Some(name);
                }
                node = child;
                i += 1;
            }
            _ => break,
        }
    }
    let field = (!fields.is_empty()).then(|| fields.join("."));
    (field, record)
}

/// Full name of `node` when it is a record definition.
fn record_name(node: &Value, namespace: Option<&str>) -> Option<String> {
    let map = node.as_object()?;
    if map.get("type")?.as_str()? != "record" {
        return None;
    }
    let name = map.get("name")?.as_str()?;
    if name.contains('.') {
        return Some(name.to_owned());
    }
    match map.get("namespace").and_then(Value::as_str).or(namespace) {
        Some(ns) if !ns.is_empty() => Some(format!("{ns}.{name}")),
        _ => Some(name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn locate_names_nested_fields_and_their_record() {
        let schema = json!({
            "type": "record", "name": "Outer", "namespace": "backbone.t",
            "fields": [
                {"name": "id", "type": "string"},
                {"name": "inner", "type": ["null", {
                    "type": "record", "name": "Inner",
                    "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "long"}]
                }]}
            ]
        });
        assert_eq!(
            locate(&schema, "/fields/1/type/1/fields/1/type"),
            (Some("inner.b".into()), Some("backbone.t.Inner".into()))
        );
        assert_eq!(
            locate(&schema, "/fields/0"),
            (Some("id".into()), Some("backbone.t.Outer".into()))
        );
        assert_eq!(
            locate(&schema, "/"),
            (None, Some("backbone.t.Outer".into()))
        );
    }
}
