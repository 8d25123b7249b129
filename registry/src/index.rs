//! The registry's in-memory view, rebuilt by applying the `_schemas` log in order.
//!
//! Every instance applies the same records in the same order with the same rules, so all
//! instances agree. A record that conflicts with what the log already holds (a version or an
//! id taken by a different schema, typically from two instances writing at once) is ignored;
//! its writer notices that its record did not take and tries again with fresh numbers.

use std::collections::{BTreeMap, HashMap};

use backbone_compat::CompatibilityMode;
use serde::{Deserialize, Serialize};

/// Key of a record in the `_schemas` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogKey {
    /// One version of a subject.
    Schema {
        /// Subject name.
        subject: String,
        /// Version number, from 1.
        version: u32,
    },
    /// A compatibility setting; `subject` is `None` for the global one.
    Config {
        /// Subject, or `None` for the global default.
        subject: Option<String>,
    },
}

/// Value of a `Schema` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    /// Subject name.
    pub subject: String,
    /// Version number.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Canonical schema text.
    pub schema: String,
    /// Soft-deleted.
    #[serde(default)]
    pub deleted: bool,
}

/// Value of a `Config` record; `None` clears a subject's setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// The mode, or `None` to fall back to the global one.
    pub compatibility: Option<CompatibilityMode>,
}

/// One registered version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Version number.
    pub version: u32,
    /// Schema id.
    pub id: u32,
    /// Soft-deleted.
    pub deleted: bool,
}

/// Everything the registry knows.
#[derive(Debug, Default)]
pub struct Index {
    schemas: BTreeMap<u32, String>,
    ids: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, Version>>,
    global: Option<CompatibilityMode>,
    subject_modes: BTreeMap<String, CompatibilityMode>,
    max_id: u32,
    max_versions: BTreeMap<String, u32>,
}

impl Index {
    /// Applies one log record; `value` is `None` for a tombstone.
    pub fn apply(&mut self, key: &LogKey, value: Option<&[u8]>) {
        match key {
            LogKey::Schema { subject, version } => match value {
                None => self.remove_version(subject, *version),
                Some(bytes) => {
                    if let Ok(record) = serde_json::from_slice::<SchemaRecord>(bytes) {
                        if &record.subject == subject && record.version == *version {
                            self.put_version(record);
                        }
                    }
                }
            },
            LogKey::Config { subject } => {
                let mode = value
                    .and_then(|b| serde_json::from_slice::<ConfigRecord>(b).ok())
                    .and_then(|r| r.compatibility);
                match (subject, mode) {
                    (None, mode) => self.global = mode,
                    (Some(s), Some(mode)) => {
                        self.subject_modes.insert(s.clone(), mode);
                    }
                    (Some(s), None) => {
                        self.subject_modes.remove(s);
                    }
                }
            }
        }
    }

    fn put_version(&mut self, record: SchemaRecord) {
        if let Some(existing) = self
            .subjects
            .get(&record.subject)
            .and_then(|v| v.get(&record.version))
        {
            // Only the soft-delete flag of a taken version may change.
            if existing.id == record.id {
                let id = existing.id;
                if let Some(v) = self
                    .subjects
                    .get_mut(&record.subject)
                    .and_then(|v| v.get_mut(&record.version))
                {
                    v.deleted = record.deleted;
                }
                self.schemas.entry(id).or_insert(record.schema);
            }
            return;
        }
        let id_taken_by_other = self
            .schemas
            .get(&record.id)
            .is_some_and(|s| s != &record.schema);
        let schema_has_other_id = self
            .ids
            .get(&record.schema)
            .is_some_and(|id| *id != record.id);
        if id_taken_by_other || schema_has_other_id {
            return;
        }
        self.max_id = self.max_id.max(record.id);
        let max_version = self.max_versions.entry(record.subject.clone()).or_default();
        *max_version = (*max_version).max(record.version);
        self.ids.insert(record.schema.clone(), record.id);
        self.schemas.insert(record.id, record.schema);
        self.subjects.entry(record.subject).or_default().insert(
            record.version,
            Version {
                version: record.version,
                id: record.id,
                deleted: record.deleted,
            },
        );
    }

    fn remove_version(&mut self, subject: &str, version: u32) {
        let Some(versions) = self.subjects.get_mut(subject) else {
            return;
        };
        let Some(removed) = versions.remove(&version) else {
            return;
        };
        if versions.is_empty() {
            self.subjects.remove(subject);
        }
        if !self.id_in_use(removed.id) {
            if let Some(schema) = self.schemas.remove(&removed.id) {
                self.ids.remove(&schema);
            }
        }
    }

    fn id_in_use(&self, id: u32) -> bool {
        self.subjects
            .values()
            .flat_map(|v| v.values())
            .any(|v| v.id == id)
    }

    /// Schema text of `id`.
    pub fn schema(&self, id: u32) -> Option<&str> {
        self.schemas.get(&id).map(String::as_str)
    }

    /// Id of a canonical schema text.
    pub fn id_of(&self, schema: &str) -> Option<u32> {
        self.ids.get(schema).copied()
    }

    /// Subject names; soft-deleted ones only when `deleted`.
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, versions)| deleted || versions.values().any(|v| !v.deleted))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Versions of `subject` in order; soft-deleted ones only when `deleted`.
    /// `None` when the subject has no versions at all.
    pub fn versions(&self, subject: &str, deleted: bool) -> Option<Vec<Version>> {
        let versions = self.subjects.get(subject)?;
        Some(
            versions
                .values()
                .filter(|v| deleted || !v.deleted)
                .cloned()
                .collect(),
        )
    }

    /// Where `id` is registered: (subject, version) pairs, live versions only.
    pub fn usages(&self, id: u32) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .values()
                    .filter(move |v| v.id == id && !v.deleted)
                    .map(move |v| (subject.clone(), v.version))
            })
            .collect()
    }

    /// The highest id ever applied.
    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    /// The highest version ever applied for `subject`.
    pub fn max_version(&self, subject: &str) -> u32 {
        self.max_versions.get(subject).copied().unwrap_or(0)
    }

    /// The global mode (BACKWARD unless set).
    pub fn global_mode(&self) -> CompatibilityMode {
        self.global.unwrap_or_default()
    }

    /// The mode set on `subject`, if any.
    pub fn subject_mode(&self, subject: &str) -> Option<CompatibilityMode> {
        self.subject_modes.get(subject).copied()
    }

    /// The mode that governs `subject`.
    pub fn effective_mode(&self, subject: &str) -> CompatibilityMode {
        self.subject_mode(subject)
            .unwrap_or_else(|| self.global_mode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(subject: &str, version: u32, id: u32, schema: &str) -> (LogKey, Vec<u8>) {
        let key = LogKey::Schema {
            subject: subject.into(),
            version,
        };
        let value = serde_json::to_vec(&SchemaRecord {
            subject: subject.into(),
            version,
            id,
            schema: schema.into(),
            deleted: false,
        })
        .unwrap();
        (key, value)
    }

    #[test]
    fn conflicting_records_from_a_race_are_ignored() {
        let mut index = Index::default();
        let (k, v) = record("a-value", 1, 1, "\"string\"");
        index.apply(&k, Some(&v));
        // Another instance allocated id 1 to a different schema at the same time.
        let (k, v) = record("b-value", 1, 1, "\"long\"");
        index.apply(&k, Some(&v));
        assert_eq!(index.schema(1), Some("\"string\""));
        assert!(index.versions("b-value", true).is_none());
        // And version 1 of a-value to a different schema.
        let (k, v) = record("a-value", 1, 2, "\"int\"");
        index.apply(&k, Some(&v));
        assert_eq!(index.versions("a-value", false).unwrap()[0].id, 1);
        assert_eq!(index.schema(2), None);
    }

    #[test]
    fn tombstone_frees_an_unused_id_but_not_the_counter() {
        let mut index = Index::default();
        let (k, v) = record("a-value", 1, 7, "\"string\"");
        index.apply(&k, Some(&v));
        index.apply(&k, None);
        assert_eq!(index.schema(7), None);
        assert_eq!(index.max_id(), 7);
        assert_eq!(index.max_version("a-value"), 1);
        assert!(index.subjects(true).is_empty());
    }

    #[test]
    fn keys_serialise_with_a_type_tag() {
        let key = LogKey::Config { subject: None };
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"keytype":"CONFIG","subject":null}"#
        );
    }
}
