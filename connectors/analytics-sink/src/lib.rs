//! `analytics-sink`: `AnalyticsFact`s into a PostgreSQL table, one statement per batch.
//!
//! The fact's `fact_id` is the primary key: a redelivered or replayed fact is an upsert that
//! changes nothing (already delivered), and a newer `source_revision` of a fact (a window
//! aggregate revised by late usage) replaces the older row, never the other way round. The
//! sink creates its schema and applies its migrations itself, under an advisory lock, so a
//! new version rolls out by starting it.

pub mod schema;
mod tls;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::InputRecord;
use backbone_schemas::types::{AnalyticsFact, Destination};
use backbone_sink::app::SinkApp;
use backbone_sink::settings::require_topic;
use backbone_sink::{
    decode, require_key, Accepted, Delivery, DeliveryError, DestinationSettings, Money, Outcome,
    Rejection, RetryReason, Sink, SinkContext,
};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use crate::schema::{migrate, FactColumns, FactRow};
use crate::tls::Transport;

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsSettings {
    /// Topic of `AnalyticsFact`s.
    pub topic: String,
    /// PostgreSQL schema holding the `facts` table; created when missing.
    pub schema: String,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            topic: "analytics.facts".to_owned(),
            schema: "analytics".to_owned(),
        }
    }
}

impl Validate for AnalyticsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        require_topic(&self.topic)?;
        let identifier = !self.schema.is_empty()
            && self.schema.len() <= 63
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !self.schema.starts_with(|c: char| c.is_ascii_digit());
        if !identifier {
            return Err(ConfigError::Invalid {
                key: "sink.schema".to_owned(),
                message: format!(
                    "must be a lower-case SQL identifier (a-z, 0-9, _), got \"{}\"",
                    self.schema
                ),
            });
        }
        Ok(())
    }
}

/// The analytics sink.
pub struct AnalyticsSink {
    settings: AnalyticsSettings,
    config: tokio_postgres::Config,
    transport: Transport,
    connection: Mutex<Option<Connected>>,
}

/// An open connection, migrated, with the upserts prepared on it once.
struct Connected {
    client: Client,
    /// One row: the fallback that isolates a row the database refuses.
    upsert: Statement,
    /// A whole batch in one statement.
    upsert_many: Statement,
}

impl std::fmt::Debug for AnalyticsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyticsSink")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AnalyticsSink {
    /// A sink loading into the database `destination` names; connects on first use.
    pub fn new(
        settings: AnalyticsSettings,
        destination: &DestinationSettings,
    ) -> Result<Self, ConfigError> {
        let (url, tls) = tls::read_sslmode(&destination.url);
        let mut config =
            tokio_postgres::Config::from_str(&url).map_err(|err| ConfigError::Invalid {
                key: "destination.url".to_owned(),
                message: format!("not a PostgreSQL URL: {err}"),
            })?;
        let transport = tls::transport(destination, tls)?;
        let password = destination.resolve_credential()?;
        if !password.is_empty() {
            config.password(password.expose());
        }
        config.connect_timeout(destination.timeout);
        config.application_name("backbone-analytics-sink");
        Ok(Self {
            settings,
            config,
            transport,
            connection: Mutex::new(None),
        })
    }

    /// A client of the database over the destination's transport; the connection task ends
    /// with the client.
    async fn open(&self) -> Result<Client, tokio_postgres::Error> {
        fn drive<F>(connection: F)
        where
            F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
        {
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::warn!(error = %err, "PostgreSQL connection closed");
                }
            });
        }
        match &self.transport {
            Transport::Plain => {
                let (client, connection) = self.config.connect(NoTls).await?;
                drive(connection);
                Ok(client)
            }
            Transport::Verified(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                drive(connection);
                Ok(client)
            }
        }
    }

    /// Over TLS, connects once at start-up: a certificate that cannot be verified stops the
    /// start naming the settings; a database that does not answer yet is an outage, which
    /// deliveries wait out.
    async fn check_tls(&self) -> Result<(), ConfigError> {
        if matches!(self.transport, Transport::Plain) {
            return Ok(());
        }
        let Err(err) = self.open().await else {
            return Ok(());
        };
        let why = backbone_sink::http::causes(&err);
        if backbone_sink::http::names_tls(&why) {
            return Err(ConfigError::Invalid {
                key: "destination.url".to_owned(),
                message: format!(
                    "TLS with the database failed: {why} (a private CA goes in destination.ca_file)"
                ),
            });
        }
        tracing::warn!(error = %why, "database not answering at start-up; deliveries will wait for it");
        Ok(())
    }

    /// Connects, migrates and prepares the upsert.
    async fn connect(&self) -> Result<Connected, DeliveryError> {
        let client = self.open().await.map_err(classify)?;
        migrate(&client, &self.settings.schema)
            .await
            .map_err(classify)?;
        let upsert = client
            .prepare(&schema::upsert_sql(&self.settings.schema))
            .await
            .map_err(classify)?;
        let upsert_many = client
            .prepare(&schema::upsert_many_sql(&self.settings.schema))
            .await
            .map_err(classify)?;
        Ok(Connected {
            client,
            upsert,
            upsert_many,
        })
    }

    /// Loads `rows` in one statement (see [`schema::upsert_many_sql`]), each fact at the newest
    /// revision the batch holds; an older revision of a fact in the same batch is settled as
    /// already delivered, as it would be after the newer one. A row the database refuses (bad
    /// data) fails the statement: the rows are then loaded one at a time, so only the bad one is
    /// rejected.
    async fn load(
        connected: &mut Connected,
        rows: &[&FactRow],
    ) -> Result<Vec<Outcome>, tokio_postgres::Error> {
        let Connected {
            client,
            upsert,
            upsert_many,
        } = connected;
        let mut newest: HashMap<&str, &FactRow> = HashMap::with_capacity(rows.len());
        for row in rows {
            let kept = newest.entry(row.fact_id.as_str()).or_insert(row);
            if row.source_revision > kept.source_revision {
                *kept = row;
            }
        }
        let columns = FactColumns::of(newest.values().copied());
        match client.query(&*upsert_many, &columns.params()).await {
            Ok(changed) => {
                let changed: HashSet<String> = changed.iter().map(|r| r.get(0)).collect();
                return Ok(rows
                    .iter()
                    .map(|row| {
                        let newest = newest
                            .get(row.fact_id.as_str())
                            .is_some_and(|n| std::ptr::eq(*n, *row));
                        row_outcome(newest && changed.contains(&row.fact_id), row)
                    })
                    .collect());
            }
            Err(err) if is_data_error(&err) => {}
            Err(err) => return Err(err),
        }
        let statement = &*upsert;
        let params: Vec<_> = rows.iter().map(|row| row.params()).collect();
        let mut outcomes = Vec::with_capacity(rows.len());
        for (row, params) in rows.iter().zip(&params) {
            match client.query_opt(statement, params).await {
                Ok(changed) => outcomes.push(row_outcome(changed.is_some(), row)),
                Err(err) if is_data_error(&err) => outcomes.push(Outcome::Rejected {
                    code: err.code().map_or("data_error".to_owned(), |c| {
                        format!("sqlstate_{}", c.code())
                    }),
                    message: err.to_string(),
                }),
                Err(err) => return Err(err),
            }
        }
        Ok(outcomes)
    }
}

fn row_outcome(changed: bool, row: &FactRow) -> Outcome {
    let reference = Some(row.fact_id.clone());
    if changed {
        Outcome::Delivered { reference }
    } else {
        // The table holds this fact at this revision or a newer one.
        Outcome::AlreadyDelivered { reference }
    }
}

/// Data exceptions (class 22) and integrity violations (class 23) are the row's fault.
fn is_data_error(err: &tokio_postgres::Error) -> bool {
    err.code()
        .is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23"))
}

/// A refused login stops the sink; anything else is an outage, retried.
fn classify(err: tokio_postgres::Error) -> DeliveryError {
    let refused = err.code().is_some_and(|code| {
        code == &SqlState::INVALID_PASSWORD
            || code == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            || code == &SqlState::INSUFFICIENT_PRIVILEGE
    });
    if refused {
        return DeliveryError::Unauthorized {
            status: 401,
            message: err.to_string(),
        };
    }
    DeliveryError::Transient {
        reason: RetryReason::Unavailable,
        message: err.to_string(),
        after: None,
    }
}

impl Sink for AnalyticsSink {
    type Payload = FactRow;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn destination(&self) -> Destination {
        Destination::Analytics
    }

    fn input_topic(&self) -> &str {
        &self.settings.topic
    }

    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<FactRow>, Rejection> {
        let fact: AnalyticsFact = decode(record, context.codec)?;
        require_key(record, "fact_id", &fact.fact_id)?;
        let money = fact
            .amount
            .zip(fact.currency.clone())
            .map(|(amount, currency)| Money { amount, currency });
        // A revision of a fact is its own delivery: the key names the revision.
        Ok(Accepted::one(
            format!("{}@{}", fact.fact_id, fact.source_revision),
            fact.metadata.tenant_id.clone(),
            FactRow::from_fact(&fact),
            money,
        ))
    }

    async fn deliver(&self, batch: &[&Delivery<FactRow>]) -> Result<Vec<Outcome>, DeliveryError> {
        let mut guard = self.connection.lock().await;
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = Some(self.connect().await?);
        }
        let Some(connected) = guard.as_mut() else {
            return Err(DeliveryError::Transient {
                reason: RetryReason::Unavailable,
                message: "no PostgreSQL connection".to_owned(),
                after: None,
            });
        };
        let rows: Vec<&FactRow> = batch.iter().map(|d| &d.payload).collect();
        match Self::load(connected, &rows).await {
            Ok(outcomes) => Ok(outcomes),
            Err(err) => {
                // The connection may be gone; the next attempt opens a fresh one.
                *guard = None;
                Err(classify(err))
            }
        }
    }
}

impl SinkApp for AnalyticsSink {
    const NAME: &'static str = "analytics-sink";
    const ABOUT: &'static str =
        "Loads AnalyticsFacts into PostgreSQL, idempotent on fact_id, newest revision wins";
    const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];
    type Settings = AnalyticsSettings;

    async fn build(
        settings: AnalyticsSettings,
        destination: &DestinationSettings,
    ) -> anyhow::Result<Self> {
        let sink = Self::new(settings, destination)?;
        sink.check_tls().await?;
        Ok(sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_name_must_be_a_plain_identifier() {
        for bad in ["", "Analytics", "a-b", "1a", "x; drop table"] {
            let settings = AnalyticsSettings {
                schema: bad.to_owned(),
                ..AnalyticsSettings::default()
            };
            let err = settings.validate().expect_err(bad);
            assert!(err.to_string().contains("sink.schema"), "{err}");
        }
        assert!(AnalyticsSettings::default().validate().is_ok());
    }

    #[test]
    fn a_bad_url_names_its_key() {
        let destination = DestinationSettings {
            url: "postgres://127.0.0.1:not-a-port/db".to_owned(),
            ..DestinationSettings::default()
        };
        let err =
            AnalyticsSink::new(AnalyticsSettings::default(), &destination).expect_err("bad url");
        assert!(err.to_string().contains("destination.url"), "{err}");
    }
}
