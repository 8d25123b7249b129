//! The contracts manifest: per topic, its contract, subject, owner, sizing and data rules.

use std::collections::BTreeSet;
use std::time::Duration;

use backbone_compat::CompatibilityMode;
use serde::Deserialize;

use crate::contracts::ContractSet;

/// The manifest compiled into this binary.
pub const EMBEDDED_MANIFEST: &str = include_str!("../manifest.toml");

/// Why a manifest is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not the expected TOML.
    #[error("manifest: {0}")]
    Syntax(String),
    /// An entry breaks a rule.
    #[error("manifest topic `{topic}`: key `{key}`: {message}")]
    Invalid {
        /// The topic entry.
        topic: String,
        /// The key concerned.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Compaction or deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Old records are deleted after the retention time.
    Delete,
    /// Only the latest record per key is kept.
    Compact,
}

/// One `[[topic]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicContract {
    /// Topic name.
    pub name: String,
    /// Key format (`string`).
    pub key_format: String,
    /// What the key holds.
    pub key_doc: String,
    /// Registry subject of the values.
    pub value_subject: String,
    /// How the subject is named (`TopicNameStrategy`).
    pub subject_name_strategy: String,
    /// Contract file of the values, relative to `contracts/`.
    pub value_schema: String,
    /// Team owning the topic.
    pub owner_team: String,
    /// System holding the truth for this data.
    pub system_of_record: String,
    /// Compatibility mode of the subject.
    pub compatibility: CompatibilityMode,
    /// Partition count.
    pub partitions: i32,
    /// Cleanup policy.
    pub cleanup_policy: CleanupPolicy,
    /// Retention for `delete` topics, like `35d`.
    #[serde(default)]
    pub retention: Option<String>,
    /// Dead-letter topic.
    pub dlq: String,
    /// Dotted paths of fields holding personal data.
    pub pii_fields: Vec<String>,
    /// Copies of each partition of the topic and its dead-letter topic; with
    /// `min_insync_replicas`, or neither, when the `[kafka.topics]` of the tool that creates
    /// the topics decides (1 on the embedded stack, 3 in docker-compose.yml).
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Replicas that must hold a write before it is acknowledged (`min.insync.replicas`).
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
    /// The CloudEvents `type` under which producers publish to this topic through the ingest
    /// gateway; a topic without one is closed to it.
    #[serde(default)]
    pub event_type: Option<String>,
    /// With `event_type`: the top-level string field of the value whose text follows the tenant
    /// in the key (`<tenant_id>:<value of the field>`).
    #[serde(default)]
    pub key_field: Option<String>,
}

impl TopicContract {
    /// The replication this entry asks for, if it says: (replication factor, min in-sync
    /// replicas).
    pub fn replication(&self) -> Option<(i32, i32)> {
        Some((self.replication_factor?, self.min_insync_replicas?))
    }

    /// Retention as a duration (`d`, `h`, `m`, `s` suffixes).
    pub fn retention(&self) -> Option<Duration> {
        let text = self.retention.as_deref()?;
        let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
        let n: u64 = digits.parse().ok()?;
        let secs = match unit {
            "d" => n.checked_mul(86_400)?,
            "h" => n.checked_mul(3_600)?,
            "m" => n.checked_mul(60)?,
            "s" => n,
            _ => return None,
        };
        Some(Duration::from_secs(secs))
    }

    /// Topic configs this entry asks for.
    pub fn topic_configs(&self) -> Vec<(String, String)> {
        let mut configs = vec![(
            "cleanup.policy".to_owned(),
            match self.cleanup_policy {
                CleanupPolicy::Delete => "delete",
                CleanupPolicy::Compact => "compact",
            }
            .to_owned(),
        )];
        if let Some(retention) = self.retention() {
            configs.push(("retention.ms".to_owned(), retention.as_millis().to_string()));
        }
        configs
    }
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Topic entries.
    pub topic: Vec<TopicContract>,
}

impl Manifest {
    /// The manifest compiled into this binary.
    pub fn embedded() -> Result<Self, ManifestError> {
        Self::parse(EMBEDDED_MANIFEST)
    }

    /// Parses manifest text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))
    }

    /// The entry for `topic`.
    pub fn topic(&self, topic: &str) -> Option<&TopicContract> {
        self.topic.iter().find(|t| t.name == topic)
    }

    /// Checks every entry against the rules and against `contracts`.
    pub fn validate(&self, contracts: &ContractSet) -> Result<(), ManifestError> {
        let mut names = BTreeSet::new();
        for entry in &self.topic {
            let invalid = |key: &'static str, message: String| ManifestError::Invalid {
                topic: entry.name.clone(),
                key,
                message,
            };
            if !names.insert(entry.name.as_str()) {
                return Err(invalid("name", "listed twice".to_owned()));
            }
            if entry.subject_name_strategy != "TopicNameStrategy" {
                return Err(invalid(
                    "subject_name_strategy",
                    format!(
                        "only TopicNameStrategy is supported, got \"{}\"",
                        entry.subject_name_strategy
                    ),
                ));
            }
            if entry.value_subject != format!("{}-value", entry.name) {
                return Err(invalid(
                    "value_subject",
                    format!(
                        "TopicNameStrategy names it \"{}-value\", got \"{}\"",
                        entry.name, entry.value_subject
                    ),
                ));
            }
            if entry.dlq != format!("{}.dlq", entry.name) {
                return Err(invalid(
                    "dlq",
                    format!("expected \"{}.dlq\", got \"{}\"", entry.name, entry.dlq),
                ));
            }
            if entry.partitions < 1 {
                return Err(invalid("partitions", "must be at least 1".to_owned()));
            }
            match entry.replication() {
                Some((factor, _)) if factor < 1 => {
                    return Err(invalid(
                        "replication_factor",
                        format!("must be at least 1, got {factor}"),
                    ))
                }
                Some((factor, in_sync)) if !(1..=factor).contains(&in_sync) => {
                    return Err(invalid(
                        "min_insync_replicas",
                        format!("must be between 1 and replication_factor {factor}, got {in_sync}"),
                    ))
                }
                None if entry.replication_factor.is_some()
                    || entry.min_insync_replicas.is_some() =>
                {
                    return Err(invalid(
                        "replication_factor",
                        "set both replication_factor and min_insync_replicas, or neither"
                            .to_owned(),
                    ))
                }
                _ => {}
            }
            match (entry.cleanup_policy, entry.retention.is_some()) {
                (CleanupPolicy::Delete, false) => {
                    return Err(invalid(
                        "retention",
                        "delete topics need a retention like \"35d\"".to_owned(),
                    ))
                }
                (CleanupPolicy::Compact, true) => {
                    return Err(invalid(
                        "retention",
                        "compacted topics keep the latest record per key; remove retention"
                            .to_owned(),
                    ))
                }
                _ => {}
            }
            if entry.retention.is_some() && entry.retention().is_none() {
                return Err(invalid(
                    "retention",
                    format!(
                        "expected a number and d, h, m or s, like \"35d\"; got {:?}",
                        entry.retention
                    ),
                ));
            }
            let Some(file) = contracts.by_path(&entry.value_schema) else {
                return Err(invalid(
                    "value_schema",
                    format!(
                        "no contract file `{}` under schemas/contracts",
                        entry.value_schema
                    ),
                ));
            };
            match (&entry.event_type, &entry.key_field) {
                (None, None) => {}
                (Some(_), Some(field)) => {
                    let is_string_field = file.json["fields"].as_array().is_some_and(|fields| {
                        fields
                            .iter()
                            .any(|f| f["name"] == field.as_str() && f["type"] == "string")
                    });
                    if !is_string_field {
                        return Err(invalid(
                            "key_field",
                            format!("`{field}` is not a top-level string field of the contract"),
                        ));
                    }
                    let types = self
                        .topic
                        .iter()
                        .filter(|t| t.event_type == entry.event_type);
                    if types.count() > 1 {
                        return Err(invalid(
                            "event_type",
                            "another topic takes the same event type".to_owned(),
                        ));
                    }
                }
                _ => {
                    return Err(invalid(
                        "event_type",
                        "set both event_type and key_field, or neither".to_owned(),
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifest_is_valid() {
        let manifest = Manifest::embedded().unwrap();
        manifest
            .validate(&ContractSet::embedded().unwrap())
            .unwrap();
        let usage = manifest.topic("usage.events").unwrap();
        assert_eq!(usage.retention(), Some(Duration::from_secs(35 * 86_400)));
    }

    #[test]
    fn bad_entries_name_topic_and_key() {
        let mut manifest = Manifest::embedded().unwrap();
        manifest.topic[0].dlq = "elsewhere".into();
        let err = manifest
            .validate(&ContractSet::embedded().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("key `dlq`"), "{err}");
        let mut manifest = Manifest::embedded().unwrap();
        let usage = manifest
            .topic
            .iter_mut()
            .find(|t| t.name == "usage.events")
            .unwrap();
        usage.key_field = Some("quantity".into());
        let err = manifest
            .validate(&ContractSet::embedded().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("key `key_field`"), "{err}");
        let err = Manifest::parse("[[topic]]\nname = 1\n").unwrap_err();
        assert!(err.to_string().starts_with("manifest:"), "{err}");
    }

    #[test]
    fn replication_is_both_figures_or_neither_and_within_bounds() {
        let contracts = ContractSet::embedded().unwrap();
        let with = |factor: Option<i32>, in_sync: Option<i32>| {
            let mut manifest = Manifest::embedded().unwrap();
            manifest.topic[0].replication_factor = factor;
            manifest.topic[0].min_insync_replicas = in_sync;
            manifest.validate(&contracts).map(|()| manifest)
        };
        let manifest = with(Some(3), Some(2)).unwrap();
        assert_eq!(manifest.topic[0].replication(), Some((3, 2)));
        assert_eq!(with(None, None).unwrap().topic[0].replication(), None);
        for (factor, in_sync, key) in [
            (Some(3), None, "replication_factor"),
            (None, Some(2), "replication_factor"),
            (Some(0), Some(1), "replication_factor"),
            (Some(3), Some(4), "min_insync_replicas"),
            (Some(3), Some(0), "min_insync_replicas"),
        ] {
            let err = with(factor, in_sync).unwrap_err().to_string();
            assert!(
                err.contains(&format!("key `{key}`")),
                "{factor:?}/{in_sync:?}: {err}"
            );
        }
    }
}
