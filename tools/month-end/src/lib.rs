//! The month-end batch. After every legal entity's billing period of a month is closed (its
//! end in the entity's time zone plus the grace that `period-close` gives late usage), it
//! builds one controlled batch per legal entity from the invoices issued on `sales.invoices`:
//! the invoices, revenue by GL account, receivables by customer, and control totals, dropped
//! into an outbox directory with a manifest and SHA-256 checksums ([`outbox`]).
//!
//! A run for a month already in the outbox writes nothing when nothing changed, after
//! checking that what it would write is byte for byte what is there; invoices of the month
//! issued since are a new adjusting batch, never an edit of a written one.

pub mod batch;
pub mod journal;
pub mod outbox;
pub mod read;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use backbone_calendar::{format_rfc3339_ms, Zone};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::KafkaSettings;
use backbone_schemas::types::{
    Contract, GlMapping, Invoice, InvoiceStatus, JournalBatch, LegalEntity,
};
use backbone_schemas::WireCodec;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;

use crate::batch::{build, Entity, Manifest, Period};

/// What stops a run.
#[derive(Debug, thiserror::Error)]
pub enum MonthEndError {
    /// A setting or argument cannot work.
    #[error("{what}: {message}")]
    Input {
        /// The setting, argument or file.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The broker failed or a topic is missing.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A record could not be decoded.
    #[error("{topic} key {key:?}: {message}")]
    Decode {
        /// Topic.
        topic: String,
        /// Record key.
        key: String,
        /// What failed.
        message: String,
    },
    /// Some legal entity's period is still open.
    #[error("period {period} of legal entity {entity} closes at {closes_at} (its end in {zone} plus month_end.grace); run again after that")]
    NotClosed {
        /// `tenant/legal entity`.
        entity: String,
        /// The month.
        period: String,
        /// Its time zone.
        zone: String,
        /// When it closes, RFC 3339.
        closes_at: String,
    },
    /// An invoice line no GL mapping covers.
    #[error("invoice {invoice} line {line}: no GL mapping of legal entity {legal_entity} covers product {product:?}, charge {charge:?} on {}", backbone_calendar::format_date(*day))]
    Unmapped {
        /// Invoice id.
        invoice: String,
        /// Line number.
        line: i32,
        /// Legal entity.
        legal_entity: String,
        /// Product id of the line (empty for none).
        product: String,
        /// Charge id of the line (empty for none).
        charge: String,
        /// Issue date, in days since the epoch.
        day: i32,
    },
    /// An invoice or a journal whose amounts do not add up.
    #[error("{what} does not add up: {message}")]
    Unbalanced {
        /// `invoice <id>`, or which journal.
        what: String,
        /// The sums.
        message: String,
    },
    /// A batch in the outbox is not what its invoices give: it was edited, or an issued
    /// invoice changed. Nothing is overwritten.
    #[error("{path} is not what the invoices it covers give now; the outbox is left as it is")]
    Changed {
        /// The first file that differs.
        path: PathBuf,
    },
    /// The outbox could not be read or written.
    #[error("{path}: {source}")]
    Outbox {
        /// File or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The config: `[kafka]`, `[schema_registry]` and `[month_end]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthEndConfig {
    /// Broker connection.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Where the contracts' schemas are registered.
    #[serde(default)]
    pub schema_registry: backbone_core::schema_registry::SchemaRegistrySettings,
    /// The batch.
    #[serde(default)]
    pub month_end: MonthEndSettings,
}

impl Validate for MonthEndConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.schema_registry.validate()?;
        if self.month_end.outbox.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "month_end.outbox".to_owned(),
                message: "must name a directory".to_owned(),
            });
        }
        Ok(())
    }
}

/// The `[month_end]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonthEndSettings {
    /// Issued invoices.
    pub invoices_topic: String,
    /// Legal entities (master data): their time zones.
    pub legal_entities_topic: String,
    /// GL mappings (master data): revenue, receivable and tax accounts.
    pub gl_mappings_topic: String,
    /// Where each batch written is published as the ERP side's journal.
    pub journal_batches_topic: String,
    /// Where batches are dropped.
    pub outbox: PathBuf,
    /// Late usage's grace after a period's end: `period-close`'s `processor.grace`.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long a read or a send waits for the broker.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
}

impl Default for MonthEndSettings {
    fn default() -> Self {
        Self {
            invoices_topic: "sales.invoices".to_owned(),
            legal_entities_topic: "master.legal-entities".to_owned(),
            gl_mappings_topic: "master.gl-mappings".to_owned(),
            journal_batches_topic: "erp.journal-batches".to_owned(),
            outbox: PathBuf::from("outbox"),
            grace: Duration::from_secs(2 * 86_400),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// What a run did for one legal entity.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A batch was written.
    Written {
        /// Its directory.
        dir: PathBuf,
        /// Its manifest.
        manifest: Box<Manifest>,
    },
    /// The batches there are what the invoices give; nothing new.
    Unchanged {
        /// Whose.
        entity: Entity,
        /// How many batches the period has.
        batches: usize,
    },
}

/// What the topics hold, decoded.
#[derive(Default)]
struct Books {
    entities: BTreeMap<Entity, LegalEntity>,
    mappings: BTreeMap<String, BTreeMap<String, GlMapping>>,
    invoices: BTreeMap<(String, String), Invoice>,
}

fn tenant_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(tenant, _)| tenant)
}

fn codec(config: &MonthEndConfig) -> Result<WireCodec, MonthEndError> {
    let access = config
        .schema_registry
        .access()
        .map_err(|e| MonthEndError::Input {
            what: "schema_registry".to_owned(),
            message: e.to_string(),
        })?;
    Ok(WireCodec::new(access))
}

/// Sends `journal` to the journal-batches topic, keyed by tenant and legal entity so that one
/// entity's batches stay in order, and waits for the broker to take it.
async fn publish(
    config: &MonthEndConfig,
    producer: &FutureProducer,
    codec: &WireCodec,
    entity: &Entity,
    journal: &JournalBatch,
) -> Result<(), MonthEndError> {
    let topic = &config.month_end.journal_batches_topic;
    let value = codec
        .encode_contract(&format!("{topic}-value"), journal)
        .await
        .map_err(|e| {
            MonthEndError::Kafka(format!("encoding journal batch {}: {e}", journal.batch_id))
        })?;
    let key = format!("{}:{}", entity.tenant, entity.legal_entity_id);
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&value),
            config.month_end.read_timeout,
        )
        .await
        .map_err(|(e, _)| {
            MonthEndError::Kafka(format!(
                "publishing journal batch {} to {topic}: {e}",
                journal.batch_id
            ))
        })?;
    Ok(())
}

async fn books(config: &MonthEndConfig, codec: &WireCodec) -> Result<Books, MonthEndError> {
    let settings = &config.month_end;
    let (kafka, topics, timeout) = (
        config.kafka.clone(),
        [
            settings.legal_entities_topic.clone(),
            settings.gl_mappings_topic.clone(),
            settings.invoices_topic.clone(),
        ],
        settings.read_timeout,
    );
    let records = tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        read::to_end(&kafka, &topics, timeout)
    })
    .await
    .map_err(|e| MonthEndError::Kafka(format!("the read failed: {e}")))??;
    let mut books = Books::default();
    for record in records {
        let tenant = tenant_of(&record.key).to_owned();
        let decode_error = |message: String| MonthEndError::Decode {
            topic: record.topic.clone(),
            key: record.key.clone(),
            message,
        };
        if record.topic == settings.legal_entities_topic {
            let Some(value) = &record.value else { continue };
            let entity: LegalEntity = codec
                .decode_as(value, LegalEntity::schema())
                .await
                .map_err(|e| decode_error(e.to_string()))?;
            let id = Entity {
                tenant,
                legal_entity_id: entity.legal_entity_id.clone(),
            };
            books.entities.insert(id, entity);
        } else if record.topic == settings.gl_mappings_topic {
            let of_tenant = books.mappings.entry(tenant).or_default();
            match &record.value {
                Some(value) => {
                    let mapping: GlMapping = codec
                        .decode_as(value, GlMapping::schema())
                        .await
                        .map_err(|e| decode_error(e.to_string()))?;
                    of_tenant.insert(record.key.clone(), mapping);
                }
                None => {
                    of_tenant.remove(&record.key);
                }
            }
        } else if let Some(value) = &record.value {
            let invoice: Invoice = codec
                .decode_as(value, Invoice::schema())
                .await
                .map_err(|e| decode_error(e.to_string()))?;
            if invoice.status == InvoiceStatus::Issued {
                books
                    .invoices
                    .insert((tenant, invoice.invoice_id.clone()), invoice);
            }
        }
    }
    Ok(books)
}

/// Builds `period`'s batches as of `now_micros`: refuses while any legal entity's period is
/// open, then writes, per legal entity, the period's batch or an adjusting batch, or nothing.
pub async fn run_period(
    config: &MonthEndConfig,
    period: Period,
    now_micros: i64,
) -> Result<Vec<Outcome>, MonthEndError> {
    let codec = codec(config)?;
    let books = books(config, &codec).await?;
    let mut of_period: BTreeMap<Entity, Vec<&Invoice>> = books
        .entities
        .keys()
        .map(|entity| (entity.clone(), Vec::new()))
        .collect();
    for ((tenant, _), invoice) in &books.invoices {
        if invoice
            .period_start
            .is_some_and(|start| (period.start()..period.end()).contains(&start))
        {
            let entity = Entity {
                tenant: tenant.clone(),
                legal_entity_id: invoice.legal_entity_id.clone(),
            };
            of_period.entry(entity).or_default().push(invoice);
        }
    }
    let grace = i64::try_from(config.month_end.grace.as_micros()).unwrap_or(i64::MAX);
    let mut windows = BTreeMap::new();
    for entity in of_period.keys() {
        let zone_name = books
            .entities
            .get(entity)
            .map_or("UTC", |e| e.time_zone.as_str());
        let zone = Zone::named(zone_name).map_err(|e| MonthEndError::Input {
            what: format!("legal entity {}/{}", entity.tenant, entity.legal_entity_id),
            message: e.to_string(),
        })?;
        let day_start = |day: i32| {
            zone.start_of(day).map_err(|e| MonthEndError::Input {
                what: format!("period {period}"),
                message: e.to_string(),
            })
        };
        let end = day_start(period.end())?;
        windows.insert(
            entity.clone(),
            journal::Window {
                period_start: period.start(),
                period_end: period.end(),
                start: day_start(period.start())?,
                end,
            },
        );
        let closes_at = end.saturating_add(grace);
        if now_micros < closes_at {
            return Err(MonthEndError::NotClosed {
                entity: format!("{}/{}", entity.tenant, entity.legal_entity_id),
                period: period.to_string(),
                zone: zone_name.to_owned(),
                closes_at: format_rfc3339_ms(closes_at / 1_000),
            });
        }
    }
    let producer: FutureProducer = config
        .kafka
        .producer_config()
        .create()
        .map_err(|e| MonthEndError::Kafka(e.to_string()))?;
    let mut outcomes = Vec::new();
    for (entity, invoices) in of_period {
        let mappings: Vec<GlMapping> = books
            .mappings
            .get(&entity.tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let dir = outbox::period_dir(&config.month_end.outbox, &entity, period)?;
        let written = outbox::written(&dir)?;
        let mut covered = BTreeSet::new();
        for batch in &written {
            let its: Vec<&Invoice> = invoices
                .iter()
                .copied()
                .filter(|i| batch.manifest.invoices.contains(&i.invoice_id))
                .collect();
            let again = build(&entity, period, batch.manifest.sequence, &its, &mappings)?;
            if let Some(path) = outbox::differs(&again, batch) {
                return Err(MonthEndError::Changed { path });
            }
            covered.extend(batch.manifest.invoices.iter().cloned());
        }
        let new: Vec<&Invoice> = invoices
            .iter()
            .copied()
            .filter(|i| !covered.contains(&i.invoice_id))
            .collect();
        if written.is_empty() || !new.is_empty() {
            let sequence = u32::try_from(written.len() + 1).unwrap_or(u32::MAX);
            let batch = build(&entity, period, sequence, &new, &mappings)?;
            // Published before the batch is in place: a run stopped between the two writes the
            // batch next time and publishes it again under the same id, which readers take
            // once; the other order could leave a batch that is never published.
            let window = windows[&entity];
            let earlier: Vec<&Manifest> = written.iter().map(|w| &w.manifest).collect();
            for journal in journal::journal_batches(&batch, &earlier, window)? {
                publish(config, &producer, &codec, &entity, &journal).await?;
            }
            let dir = outbox::write(&dir, &batch)?;
            outcomes.push(Outcome::Written {
                dir,
                manifest: Box::new(batch.manifest),
            });
        } else {
            outcomes.push(Outcome::Unchanged {
                entity,
                batches: written.len(),
            });
        }
    }
    Ok(outcomes)
}
