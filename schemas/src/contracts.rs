//! Loading `.avsc` contract files and bundling them into self-contained schemas.
//!
//! Each file holds one named record. A file may use a record defined in another file by its
//! full name (`"type": "backbone.common.EventMetadata"`); bundling replaces the first use of
//! each such name with that file's definition, so the registry receives one self-contained
//! schema per subject and no schema references are needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use apache_avro::Schema;
use serde_json::Value;

/// Why contracts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A file could not be read.
    #[error("contract `{path}`: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A file is not JSON or not a named record.
    #[error("contract `{path}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Two files define the same name.
    #[error("contracts `{first}` and `{second}` both define `{name}`")]
    Duplicate {
        /// The name.
        name: String,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// The bundled schema is not valid Avro.
    #[error("contract `{path}`: bundled schema is not valid Avro: {message}")]
    Avro {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// No file defines a name.
    #[error("no contract defines `{name}`")]
    Unknown {
        /// The name.
        name: String,
    },
}

/// One contract file.
#[derive(Debug, Clone)]
pub struct ContractFile {
    /// Path relative to the contracts directory, with `/` separators.
    pub path: String,
    /// Full name of the record it defines.
    pub name: String,
    /// The file's JSON as written.
    pub json: Value,
}

/// Every contract, by full name.
#[derive(Debug, Clone, Default)]
pub struct ContractSet {
    files: BTreeMap<String, ContractFile>,
}

impl ContractSet {
    /// The contracts compiled into this binary.
    pub fn embedded() -> Result<Self, ContractError> {
        Self::from_texts(
            crate::CONTRACT_FILES
                .iter()
                .map(|(p, t)| ((*p).to_owned(), (*t).to_owned())),
        )
    }

    /// Reads every `.avsc` file under `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, ContractError> {
        Self::from_texts(read_texts(dir)?)
    }

    /// Builds the set from (path, text) pairs.
    pub fn from_texts(
        texts: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ContractError> {
        let mut files: BTreeMap<String, ContractFile> = BTreeMap::new();
        for (path, text) in texts {
            let json: Value = serde_json::from_str(&text).map_err(|e| ContractError::Invalid {
                path: path.clone(),
                message: format!("not JSON: {e}"),
            })?;
            let name = full_name(&json, None).ok_or_else(|| ContractError::Invalid {
                path: path.clone(),
                message: "expected one named record at the top level".to_owned(),
            })?;
            if let Some(first) = files.get(&name) {
                return Err(ContractError::Duplicate {
                    name,
                    first: first.path.clone(),
                    second: path,
                });
            }
            files.insert(name.clone(), ContractFile { path, name, json });
        }
        Ok(Self { files })
    }

    /// All files, by full name.
    pub fn files(&self) -> impl Iterator<Item = &ContractFile> {
        self.files.values()
    }

    /// The file defining `name`.
    pub fn file(&self, name: &str) -> Option<&ContractFile> {
        self.files.get(name)
    }

    /// The file at `path` (relative to the contracts directory).
    pub fn by_path(&self, path: &str) -> Option<&ContractFile> {
        self.files.values().find(|f| f.path == path)
    }

    /// The self-contained schema of the record `name`, as JSON.
    pub fn bundled(&self, name: &str) -> Result<Value, ContractError> {
        let file = self.files.get(name).ok_or_else(|| ContractError::Unknown {
            name: name.to_owned(),
        })?;
        let mut defined = BTreeSet::new();
        defined.insert(name.to_owned());
        self.inline(&file.json, None, &mut defined)
    }

    /// The self-contained schema of the record `name`, parsed.
    pub fn schema(&self, name: &str) -> Result<Schema, ContractError> {
        let json = self.bundled(name)?;
        let path = self
            .files
            .get(name)
            .map(|f| f.path.clone())
            .unwrap_or_default();
        Schema::parse(&json).map_err(|e| ContractError::Avro {
            path,
            message: e.to_string(),
        })
    }

    fn inline(
        &self,
        node: &Value,
        namespace: Option<&str>,
        defined: &mut BTreeSet<String>,
    ) -> Result<Value, ContractError> {
        match node {
            Value::String(name) => {
                let full = qualify(name, namespace);
                if defined.contains(&full) {
                    return Ok(Value::String(full));
                }
                // First use of another file's record: inline it. Later uses (and uses inside
                // it of records already inlined, recursive types included) stay names.
                match self.files.get(&full) {
                    Some(file) => {
                        defined.insert(full);
                        self.inline(&file.json, None, defined)
                    }
                    None => Ok(node.clone()),
                }
            }
            Value::Array(branches) => branches
                .iter()
                .map(|b| self.inline(b, namespace, defined))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(map) => {
                let own_namespace = map
                    .get("namespace")
                    .and_then(Value::as_str)
                    .or(namespace)
                    .map(str::to_owned);
                if let Some(full) = full_name(node, namespace) {
                    defined.insert(full);
                }
                let mut out = serde_json::Map::new();
                for (key, value) in map {
                    let inlined = match key.as_str() {
                        "type" | "items" | "values" => {
                            self.inline(value, own_namespace.as_deref(), defined)?
                        }
                        "fields" => match value {
                            Value::Array(fields) => Value::Array(
                                fields
                                    .iter()
                                    .map(|f| self.inline(f, own_namespace.as_deref(), defined))
                                    .collect::<Result<Vec<_>, _>>()?,
                            ),
                            other => other.clone(),
                        },
                        _ => value.clone(),
                    };
                    out.insert(key.clone(), inlined);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }
}

/// Full name of a named-type JSON node (`record`, `enum`, `fixed`).
fn full_name(node: &Value, namespace: Option<&str>) -> Option<String> {
    let kind = node.get("type")?.as_str()?;
    if !matches!(kind, "record" | "enum" | "fixed" | "error") {
        return None;
    }
    let name = node.get("name")?.as_str()?;
    let ns = node.get("namespace").and_then(Value::as_str).or(namespace);
    Some(qualify(name, ns))
}

fn qualify(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() && !is_primitive(name) => {
            format!("{ns}.{name}")
        }
        _ => name.to_owned(),
    }
}

fn is_primitive(name: &str) -> bool {
    matches!(
        name,
        "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string"
    )
}

/// Every `.avsc` file under `dir`, sorted, as (path relative to `dir` with `/` separators,
/// text).
pub fn read_texts(dir: &Path) -> Result<Vec<(String, String)>, ContractError> {
    let read_error = |path: &Path, e: std::io::Error| ContractError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut paths = Vec::new();
    walk(dir, &mut paths).map_err(|e| read_error(dir, e))?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| read_error(&path, e))?;
            let relative = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            Ok((relative, text))
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_contract_bundles_into_valid_avro() {
        let set = ContractSet::embedded().unwrap();
        assert!(set.files().count() >= 25);
        for file in set.files() {
            set.schema(&file.name)
                .unwrap_or_else(|e| panic!("{}: {e}", file.path));
        }
    }

    #[test]
    fn shared_records_are_inlined_once() {
        let set = ContractSet::embedded().unwrap();
        let bundled = set
            .bundled("backbone.usage.UsageEvent")
            .unwrap()
            .to_string();
        assert_eq!(
            bundled.matches("\"name\":\"EventMetadata\"").count(),
            1,
            "{bundled}"
        );
    }

    #[test]
    fn mutual_references_bundle_and_duplicates_are_reported() {
        let a =
            r#"{"type":"record","name":"A","namespace":"t","fields":[{"name":"b","type":"t.B"}]}"#;
        let b = r#"{"type":"record","name":"B","namespace":"t","fields":[{"name":"a","type":["null","t.A"]}]}"#;
        let set =
            ContractSet::from_texts([("a.avsc".into(), a.into()), ("b.avsc".into(), b.into())])
                .unwrap();
        // A refers to B refers back to A: inside the bundle the back-reference is a name,
        // which Avro allows (a recursive type).
        let schema = set.schema("t.A").unwrap();
        assert!(matches!(schema, Schema::Record(_)));
        let dup =
            ContractSet::from_texts([("a.avsc".into(), a.into()), ("c.avsc".into(), a.into())]);
        assert!(matches!(dup, Err(ContractError::Duplicate { .. })));
    }
}
