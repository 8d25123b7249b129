//! The registry's operations, independent of HTTP: what each endpoint does to the index and
//! the log, and which Confluent error it answers with.

use std::time::Duration;

use apache_avro::Schema;
use backbone_compat::CompatibilityMode;
use backbone_core::KafkaSettings;
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::index::{ConfigRecord, Index, LogKey, SchemaRecord, Version};
use crate::log::{LogError, SchemaLog};
use crate::request::{parse_schema, ParsedSchema};

/// How many times a write is retried when another instance took the same id or version.
const WRITE_ATTEMPTS: usize = 8;

/// Which version an endpoint addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    /// `latest` or `-1`.
    Latest,
    /// A version number.
    Number(u32),
}

impl VersionRef {
    /// Parses a path segment; 42202 when it is neither a positive number nor `latest`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "latest" | "-1" => Ok(Self::Latest),
            other => match other.parse::<u32>() {
                Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(Self::Number(n)),
                _ => Err(ApiError::invalid_version(text)),
            },
        }
    }
}

/// A registered schema as endpoints return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Subject.
    pub subject: String,
    /// Version.
    pub version: u32,
    /// Id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

/// The outcome of a compatibility test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    /// Whether the schema may be registered.
    pub is_compatible: bool,
    /// What is incompatible, with which version.
    pub messages: Vec<String>,
}

/// The registry: one log, one index, writes serialised within the instance.
pub struct Registry {
    log: SchemaLog,
    writes: Mutex<()>,
}

impl Registry {
    /// Opens the registry on `topic`, replaying it into memory before returning.
    pub async fn open(
        settings: &KafkaSettings,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, LogError> {
        Ok(Self {
            log: SchemaLog::open(settings, topic, timeout).await?,
            writes: Mutex::new(()),
        })
    }

    async fn read<T>(&self, f: impl FnOnce(&Index) -> T) -> Result<T, ApiError> {
        self.log.catch_up().await?;
        let index = self
            .log
            .index()
            .read()
            .map_err(|_| ApiError::store("index lock poisoned"))?;
        Ok(f(&index))
    }

    /// All subjects.
    pub async fn subjects(&self, deleted: bool) -> Result<Vec<String>, ApiError> {
        self.read(|index| index.subjects(deleted)).await
    }

    /// Version numbers of a subject.
    pub async fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, ApiError> {
        self.read(|index| match index.versions(subject, deleted) {
            Some(v) if !v.is_empty() => Ok(v.iter().map(|v| v.version).collect()),
            _ => Err(ApiError::subject_not_found(subject)),
        })
        .await?
    }

    /// One version of a subject.
    pub async fn version(
        &self,
        subject: &str,
        version: VersionRef,
        deleted: bool,
    ) -> Result<Registered, ApiError> {
        self.read(|index| {
            let v = find_version(index, subject, version, deleted)?;
            registered(index, subject, &v)
        })
        .await?
    }

    /// The schema text of `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, ApiError> {
        self.read(|index| {
            index
                .schema(id)
                .map(str::to_owned)
                .ok_or_else(|| ApiError::schema_not_found(&id.to_string()))
        })
        .await?
    }

    /// Where `id` is registered.
    pub async fn usages_of(&self, id: u32) -> Result<Vec<(String, u32)>, ApiError> {
        self.read(|index| {
            if index.schema(id).is_none() {
                return Err(ApiError::schema_not_found(&id.to_string()));
            }
            Ok(index.usages(id))
        })
        .await?
    }

    /// Finds `candidate` among the live versions of `subject`.
    pub async fn lookup(
        &self,
        subject: &str,
        candidate: &ParsedSchema,
        deleted: bool,
    ) -> Result<Registered, ApiError> {
        self.read(|index| {
            let versions = match index.versions(subject, deleted) {
                Some(v) if !v.is_empty() => v,
                _ => return Err(ApiError::subject_not_found(subject)),
            };
            let id = index.id_of(&candidate.canonical);
            let found = versions
                .iter()
                .rev()
                .find(|v| Some(v.id) == id)
                .ok_or_else(|| ApiError::schema_not_found("in this subject"))?;
            registered(index, subject, found)
        })
        .await?
    }

    /// Registers `candidate` under `subject`, or returns the id it already has there.
    pub async fn register(&self, subject: &str, candidate: &ParsedSchema) -> Result<u32, ApiError> {
        let _guard = self.writes.lock().await;
        for _ in 0..WRITE_ATTEMPTS {
            let plan = self
                .read(|index| plan_registration(index, subject, candidate))
                .await??;
            let (id, version) = match plan {
                Plan::Existing(id) => return Ok(id),
                Plan::New { id, version } => (id, version),
            };
            let record = SchemaRecord {
                subject: subject.to_owned(),
                version,
                id,
                schema: candidate.canonical.clone(),
                deleted: false,
            };
            self.append_schema(&record).await?;
            let taken = self
                .read(|index| {
                    index
                        .versions(subject, true)
                        .is_some_and(|vs| vs.iter().any(|v| v.version == version && v.id == id))
                })
                .await?;
            if taken {
                tracing::info!(subject, version, id, "schema registered");
                return Ok(id);
            }
            // Another instance wrote the same version or id first; plan again on the new state.
        }
        Err(ApiError::store(
            "another registry instance kept writing the same subject; try again",
        ))
    }

    /// Tests `candidate` against `version` (or, for `latest`, the versions its mode covers).
    pub async fn test_compatibility(
        &self,
        subject: &str,
        version: VersionRef,
        candidate: &ParsedSchema,
    ) -> Result<Compatibility, ApiError> {
        self.read(|index| {
            let mode = index.effective_mode(subject);
            let existing = match version {
                VersionRef::Latest => {
                    let versions = index.versions(subject, false).unwrap_or_default();
                    if versions.is_empty() {
                        return Err(ApiError::subject_not_found(subject));
                    }
                    parse_versions(index, &versions)?
                }
                VersionRef::Number(_) => {
                    let v = find_version(index, subject, version, false)?;
                    parse_versions(index, &[v])?
                }
            };
            let messages = compatibility_messages(mode, &candidate.schema, &existing);
            Ok(Compatibility {
                is_compatible: messages.is_empty(),
                messages,
            })
        })
        .await?
    }

    /// Soft-deletes (or, when `permanent`, removes) every version of `subject`.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, ApiError> {
        let _guard = self.writes.lock().await;
        let versions = self
            .read(|index| index.versions(subject, true).unwrap_or_default())
            .await?;
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        let live: Vec<&Version> = versions.iter().filter(|v| !v.deleted).collect();
        if permanent {
            if !live.is_empty() {
                return Err(ApiError::subject_not_soft_deleted(subject));
            }
            for v in &versions {
                self.append_tombstone(subject, v.version).await?;
            }
            return Ok(versions.iter().map(|v| v.version).collect());
        }
        if live.is_empty() {
            return Err(ApiError::subject_soft_deleted(subject));
        }
        for v in &live {
            self.mark_deleted(subject, v).await?;
        }
        Ok(live.iter().map(|v| v.version).collect())
    }

    /// Soft-deletes (or, when `permanent`, removes) one version.
    pub async fn delete_version(
        &self,
        subject: &str,
        version: VersionRef,
        permanent: bool,
    ) -> Result<u32, ApiError> {
        let _guard = self.writes.lock().await;
        let target = self
            .read(|index| find_version(index, subject, version, true))
            .await??;
        if permanent {
            if !target.deleted {
                return Err(ApiError::version_not_soft_deleted(subject, target.version));
            }
            self.append_tombstone(subject, target.version).await?;
        } else {
            if target.deleted {
                return Err(ApiError::version_soft_deleted(subject, target.version));
            }
            self.mark_deleted(subject, &target).await?;
        }
        Ok(target.version)
    }

    /// The global mode.
    pub async fn global_mode(&self) -> Result<CompatibilityMode, ApiError> {
        self.read(Index::global_mode).await
    }

    /// The mode of `subject`: its own, or with `default_to_global` the global one;
    /// 40408 when it has none and the global one was not asked for.
    pub async fn subject_mode(
        &self,
        subject: &str,
        default_to_global: bool,
    ) -> Result<CompatibilityMode, ApiError> {
        self.read(|index| match index.subject_mode(subject) {
            Some(mode) => Ok(mode),
            None if default_to_global => Ok(index.global_mode()),
            None => Err(ApiError::subject_level_not_configured(subject)),
        })
        .await?
    }

    /// Sets the global mode (`subject` `None`) or a subject's.
    pub async fn set_mode(
        &self,
        subject: Option<&str>,
        mode: Option<CompatibilityMode>,
    ) -> Result<(), ApiError> {
        let _guard = self.writes.lock().await;
        let key = LogKey::Config {
            subject: subject.map(str::to_owned),
        };
        let value = serde_json::to_vec(&ConfigRecord {
            compatibility: mode,
        })
        .map_err(|e| ApiError::store(&e.to_string()))?;
        self.log.append(&key, Some(&value)).await?;
        Ok(())
    }

    async fn append_schema(&self, record: &SchemaRecord) -> Result<(), ApiError> {
        let key = LogKey::Schema {
            subject: record.subject.clone(),
            version: record.version,
        };
        let value = serde_json::to_vec(record).map_err(|e| ApiError::store(&e.to_string()))?;
        self.log.append(&key, Some(&value)).await?;
        Ok(())
    }

    async fn mark_deleted(&self, subject: &str, version: &Version) -> Result<(), ApiError> {
        let schema = self
            .read(|index| index.schema(version.id).map(str::to_owned))
            .await?
            .ok_or_else(|| ApiError::schema_not_found(&version.id.to_string()))?;
        self.append_schema(&SchemaRecord {
            subject: subject.to_owned(),
            version: version.version,
            id: version.id,
            schema,
            deleted: true,
        })
        .await
    }

    async fn append_tombstone(&self, subject: &str, version: u32) -> Result<(), ApiError> {
        let key = LogKey::Schema {
            subject: subject.to_owned(),
            version,
        };
        self.log.append(&key, None).await?;
        Ok(())
    }
}

enum Plan {
    Existing(u32),
    New { id: u32, version: u32 },
}

fn plan_registration(
    index: &Index,
    subject: &str,
    candidate: &ParsedSchema,
) -> Result<Plan, ApiError> {
    let known_id = index.id_of(&candidate.canonical);
    let live = index.versions(subject, false).unwrap_or_default();
    if let Some(id) = known_id {
        if live.iter().any(|v| v.id == id) {
            return Ok(Plan::Existing(id));
        }
    }
    let existing = parse_versions(index, &live)?;
    let messages =
        compatibility_messages(index.effective_mode(subject), &candidate.schema, &existing);
    if !messages.is_empty() {
        return Err(ApiError::incompatible(subject, &messages));
    }
    Ok(Plan::New {
        id: known_id.unwrap_or(index.max_id() + 1),
        version: index.max_version(subject) + 1,
    })
}

fn find_version(
    index: &Index,
    subject: &str,
    version: VersionRef,
    deleted: bool,
) -> Result<Version, ApiError> {
    let versions = index
        .versions(subject, true)
        .filter(|v| deleted || v.iter().any(|v| !v.deleted))
        .ok_or_else(|| ApiError::subject_not_found(subject))?;
    let mut visible = versions.iter().filter(|v| deleted || !v.deleted);
    let found = match version {
        VersionRef::Latest => visible.next_back(),
        VersionRef::Number(n) => visible.find(|v| v.version == n),
    };
    found.cloned().ok_or_else(|| {
        ApiError::version_not_found(&match version {
            VersionRef::Latest => "latest".to_owned(),
            VersionRef::Number(n) => n.to_string(),
        })
    })
}

fn registered(index: &Index, subject: &str, version: &Version) -> Result<Registered, ApiError> {
    let schema = index
        .schema(version.id)
        .ok_or_else(|| ApiError::schema_not_found(&version.id.to_string()))?;
    Ok(Registered {
        subject: subject.to_owned(),
        version: version.version,
        id: version.id,
        schema: schema.to_owned(),
    })
}

fn parse_versions(index: &Index, versions: &[Version]) -> Result<Vec<(u32, Schema)>, ApiError> {
    versions
        .iter()
        .map(|v| {
            let text = index
                .schema(v.id)
                .ok_or_else(|| ApiError::schema_not_found(&v.id.to_string()))?;
            parse_schema(text, None)
                .map(|parsed| (v.version, parsed.schema))
                .map_err(|e| ApiError::store(&format!("stored schema {}: {}", v.id, e.message)))
        })
        .collect()
}

/// Readable incompatibilities of `candidate` with `existing` (oldest first) under `mode`,
/// naming each registry version concerned.
fn compatibility_messages(
    mode: CompatibilityMode,
    candidate: &Schema,
    existing: &[(u32, Schema)],
) -> Vec<String> {
    let schemas: Vec<Schema> = existing.iter().map(|(_, s)| s.clone()).collect();
    backbone_compat::check(mode, candidate, &schemas)
        .iter()
        .map(|err| {
            let version = existing.get(err.existing_index).map_or(0, |(v, _)| *v);
            err.describe(version)
        })
        .collect()
}
