//! The drift reconciler: compares what must agree across the backbone's stages and the
//! external systems, per tenant, period, legal entity and currency, and says by how much it
//! does not.
//!
//! One side comes from the backbone's topics (usage the rater accepted and dead-lettered, rated
//! lines, customer accounts, GL mappings, legal entities, issued invoices), the other from the
//! systems' read APIs (the billing system's charges, the ERP's journals, the CRM's accounts) or,
//! for the invoices, from the rated lines; see [`books`] for the checks.
//! `drift report` prints one reconciliation as a table; `drift serve` keeps following the
//! topics and exports the differences as gauges for Prometheus.

pub mod books;
pub mod legacy_erp;
pub mod metrics;
pub mod systems;

pub use systems::{holdings, BackOffice, SandboxApis};

use std::net::SocketAddr;
use std::time::Duration;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::KafkaSettings;
use backbone_schemas::types::{Contract, EnrichedUsage};
use backbone_schemas::WireCodec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde::Deserialize;

use crate::books::{format_unscaled, Books, Check, DriftLine};
use crate::legacy_erp::{LegacyErpSettings, LegacyJournal};

/// The config file: `[kafka]`, `[schema_registry]` and `[drift]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Broker connection.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Where the contracts' schemas are registered.
    #[serde(default)]
    pub schema_registry: backbone_core::schema_registry::SchemaRegistrySettings,
    /// What to compare.
    #[serde(default)]
    pub drift: DriftSettings,
}

impl Validate for DriftConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.schema_registry.validate()?;
        self.drift.validate()
    }
}

/// The `[drift]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    /// Usage the rater takes in.
    pub enriched_topic: String,
    /// Usage the rater dead-lettered.
    pub enriched_dlq_topic: String,
    /// Rated lines.
    pub rated_topic: String,
    /// Customer accounts (master data).
    pub accounts_topic: String,
    /// GL mappings (master data): which accounts are receivables.
    pub gl_mappings_topic: String,
    /// Legal entities (master data): their time zones date the ERP's postings.
    pub legal_entities_topic: String,
    /// Issued invoices: their lines against the rated lines they name.
    pub invoices_topic: String,
    /// The billing system's API.
    pub billing_url: String,
    /// The CRM's API.
    pub crm_url: String,
    /// The ERP's API.
    pub erp_url: String,
    /// Bearer token for the three APIs.
    pub credential: backbone_core::Secret,
    /// File holding the token; wins over `credential`.
    pub credential_file: Option<std::path::PathBuf>,
    /// The legacy ERP's journal export, for entities whose books it keeps (`[drift.legacy_erp]`).
    pub legacy_erp: Option<LegacyErpSettings>,
    /// How often `serve` reconciles.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Where `serve` exposes `/metrics`.
    pub listen: SocketAddr,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            enriched_topic: "usage.enriched".to_owned(),
            enriched_dlq_topic: "usage.enriched.dlq".to_owned(),
            rated_topic: "usage.rated".to_owned(),
            accounts_topic: "master.customer-accounts".to_owned(),
            gl_mappings_topic: "master.gl-mappings".to_owned(),
            legal_entities_topic: "master.legal-entities".to_owned(),
            invoices_topic: "sales.invoices".to_owned(),
            billing_url: "http://127.0.0.1:8090".to_owned(),
            crm_url: "http://127.0.0.1:8090".to_owned(),
            erp_url: "http://127.0.0.1:8090".to_owned(),
            credential: backbone_core::Secret::new("sandbox-token"),
            credential_file: None,
            legacy_erp: None,
            interval: Duration::from_secs(15),
            listen: SocketAddr::from(([127, 0, 0, 1], 9471)),
        }
    }
}

impl Validate for DriftSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("billing_url", &self.billing_url),
            ("crm_url", &self.crm_url),
            ("erp_url", &self.erp_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: format!("drift.{key}"),
                    message: format!("expected an http:// or https:// URL, got \"{url}\""),
                });
            }
        }
        if self.interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "drift.interval".to_owned(),
                message: "must be at least 1s".to_owned(),
            });
        }
        if let Some(legacy) = &self.legacy_erp {
            LegacyJournal::new(legacy)?;
        }
        self.token().map(|_| ())
    }
}

impl DriftSettings {
    /// The token, from `credential_file` when set.
    pub fn token(&self) -> Result<backbone_core::Secret, ConfigError> {
        backbone_core::Secret::resolve(
            &self.credential,
            self.credential_file.as_deref(),
            "drift.credential_file",
        )
    }

    fn topics(&self) -> [&str; 7] {
        [
            &self.enriched_topic,
            &self.enriched_dlq_topic,
            &self.rated_topic,
            &self.accounts_topic,
            &self.gl_mappings_topic,
            &self.legal_entities_topic,
            &self.invoices_topic,
        ]
    }
}

/// Why a reconciliation could not run.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// A setting cannot work (a secret file that cannot be read).
    #[error("{0}")]
    Config(String),
    /// The broker failed or a topic is missing.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A record could not be decoded.
    #[error("{topic}[{partition}]@{offset}: {message}")]
    Decode {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// What failed.
        message: String,
    },
    /// An external system's read API failed.
    #[error("reading {system} at {url}: {message}")]
    System {
        /// Which system.
        system: &'static str,
        /// Its URL.
        url: String,
        /// What failed.
        message: String,
    },
}

/// Follows the backbone's topics from their beginning into [`Books`].
pub struct TopicReader {
    consumer: BaseConsumer,
    settings: DriftSettings,
    codec: WireCodec,
}

impl TopicReader {
    /// A reader of every topic the checks need, from offset 0; a missing topic is an error
    /// naming it.
    pub fn new(
        kafka: &KafkaSettings,
        settings: &DriftSettings,
        codec: WireCodec,
    ) -> Result<Self, DriftError> {
        let mut config = kafka.admin_config();
        config
            .set("group.id", "backbone-drift")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| DriftError::Kafka(e.to_string()))?;
        let assignment = backbone_core::admin::whole_topics(
            &consumer,
            &kafka.bootstrap_servers,
            &settings.topics(),
            Duration::from_secs(10),
        )
        .map_err(|e| DriftError::Kafka(e.to_string()))?;
        consumer
            .assign(&assignment)
            .map_err(|e| DriftError::Kafka(e.to_string()))?;
        Ok(Self {
            consumer,
            settings: settings.clone(),
            codec,
        })
    }

    /// The end of every assigned partition now.
    fn ends(&self) -> Result<Vec<(String, i32, i64)>, DriftError> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| DriftError::Kafka(e.to_string()))?;
        let mut ends = Vec::new();
        for element in assignment.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(
                    element.topic(),
                    element.partition(),
                    Duration::from_secs(10),
                )
                .map_err(|e| DriftError::Kafka(e.to_string()))?;
            ends.push((element.topic().to_owned(), element.partition(), high));
        }
        Ok(ends)
    }

    /// Reads until every partition reached the end it had when called.
    pub async fn catch_up(&self, books: &mut Books) -> Result<u64, DriftError> {
        let mut remaining: Vec<(String, i32, i64)> = self
            .ends()?
            .into_iter()
            .filter(|(_, _, high)| *high > 0)
            .collect();
        let mut read = 0;
        while !remaining.is_empty() {
            // Positions advance only as records are read; a partition whose position reached
            // its end is done.
            let position = self
                .consumer
                .position()
                .map_err(|e| DriftError::Kafka(e.to_string()))?;
            remaining.retain(|(topic, partition, high)| {
                position
                    .find_partition(topic, *partition)
                    .and_then(|e| e.offset().to_raw())
                    .is_none_or(|offset| offset < *high)
            });
            if remaining.is_empty() {
                break;
            }
            read += self.poll(books, Duration::from_millis(200)).await?;
        }
        Ok(read)
    }

    /// Applies what arrives within `wait`; returns how many records that was.
    pub async fn poll(&self, books: &mut Books, wait: Duration) -> Result<u64, DriftError> {
        let Some(message) = self.consumer.poll(wait) else {
            return Ok(0);
        };
        let message = message.map_err(|e| DriftError::Kafka(e.to_string()))?;
        let read = 1;
        let topic = message.topic().to_owned();
        let at = Place {
            topic: &topic,
            partition: message.partition(),
            offset: message.offset(),
        };
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let Some(value) = message.payload() else {
            if topic == self.settings.accounts_topic {
                books.account(&key, None);
            } else if topic == self.settings.legal_entities_topic {
                books.legal_entity(&key, None);
            }
            return Ok(read);
        };
        let s = &self.settings;
        if topic == s.enriched_topic || topic == s.enriched_dlq_topic {
            // A record the validator or enricher could not decode never reached here; one
            // that does not decode is the DLQ's own business, not a drift.
            let Ok(event) = self.decode::<EnrichedUsage>(value, &at).await else {
                return Ok(read);
            };
            if topic == s.enriched_topic {
                books.enriched(&event);
            } else {
                books.rejected_by_rater(&event);
            }
        } else if topic == s.rated_topic {
            books.rated(&self.decode(value, &at).await?);
        } else if topic == s.accounts_topic {
            books.account(&key, Some(&self.decode(value, &at).await?));
        } else if topic == s.gl_mappings_topic {
            books.gl_mapping(&self.decode(value, &at).await?);
        } else if topic == s.legal_entities_topic {
            books.legal_entity(&key, Some(&self.decode(value, &at).await?));
        } else if topic == s.invoices_topic {
            books.invoice(&self.decode(value, &at).await?);
        }
        Ok(read)
    }

    /// `value` decoded as contract `T`, or the error naming where it was read.
    async fn decode<T: Contract>(&self, value: &[u8], at: &Place<'_>) -> Result<T, DriftError> {
        self.codec
            .decode_as(value, T::schema())
            .await
            .map_err(|e| DriftError::Decode {
                topic: at.topic.to_owned(),
                partition: at.partition,
                offset: at.offset,
                message: e.to_string(),
            })
    }
}

/// Where a record was read.
struct Place<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

impl DriftSettings {
    /// The systems' read APIs, as configured.
    pub fn systems(&self) -> Result<SandboxApis, DriftError> {
        let token = self.token().map_err(|e| DriftError::System {
            system: "credentials",
            url: String::new(),
            message: e.to_string(),
        })?;
        let legacy = match &self.legacy_erp {
            Some(settings) => Some(
                LegacyJournal::new(settings).map_err(|err| DriftError::Config(err.to_string()))?,
            ),
            None => None,
        };
        Ok(
            SandboxApis::new(&self.billing_url, &self.erp_url, &self.crm_url, token)
                .with_legacy_erp(legacy),
        )
    }
}

/// Reads the topics to their current end, reads the systems, and reconciles once.
pub async fn reconcile_once(config: &DriftConfig) -> Result<Vec<DriftLine>, DriftError> {
    let codec = WireCodec::new(
        config
            .schema_registry
            .access()
            .map_err(|err| DriftError::Config(err.to_string()))?,
    );
    let reader = TopicReader::new(&config.kafka, &config.drift, codec)?;
    let mut books = Books::default();
    reader.catch_up(&mut books).await?;
    let held = holdings(&config.drift.systems()?).await?;
    Ok(books.reconcile(&held))
}

/// The lines as a table, then one verdict per check.
pub fn render_table(lines: &[DriftLine]) -> String {
    use backbone_core::table::{Align, Table};
    use std::fmt::Write as _;
    let mut table = Table::new(
        [
            "check",
            "tenant",
            "period",
            "entity",
            "cur",
            "expected",
            "observed",
            "difference",
            "relative",
        ],
        [
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    );
    for line in lines {
        let k = &line.key;
        table.row([
            k.check.as_str().to_owned(),
            k.tenant.clone(),
            k.period.clone(),
            k.legal_entity.clone(),
            k.currency.clone(),
            line.format(line.expected),
            line.format(line.observed),
            line.format(line.difference()),
            format!("{:.4}%", line.relative() * 100.0),
        ]);
    }
    let mut out = table.render();
    for check in Check::ALL {
        let differing: Vec<&DriftLine> = lines
            .iter()
            .filter(|l| l.key.check == check && l.difference() != 0)
            .collect();
        let total: i128 = differing.iter().map(|l| l.difference()).sum();
        let _ = writeln!(
            out,
            "{}: {}",
            check.as_str(),
            if differing.is_empty() {
                "no drift".to_owned()
            } else {
                format!(
                    "{} keys differ, net {}",
                    differing.len(),
                    format_unscaled(total, check.scale())
                )
            }
        );
    }
    out
}
