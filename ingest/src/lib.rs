//! `ingest`: the governed way in for producers that cannot run a Kafka client (a browser-facing
//! API, a partner, a serverless function). `POST /v1/events` takes CloudEvents 1.0 in JSON,
//! one event or a batch, turns each into the record of its contract and answers once the broker
//! acknowledged every record it produced.
//!
//! - Routing: an event's `type` names its topic through the manifest's `event_type`; the
//!   record's key is `<tenant>:<data.<key_field>>`, as the topic's key doc says.
//! - Envelope: the tenant is the API key's, `event_id` the CloudEvents `id`, `source` and
//!   `type` the event's, `occurred_at` its `time` (required: the business time decides the
//!   billing period, and a retry must not move it), `produced_at` the gateway's clock, the
//!   trace from the event's `traceparent` extension or the request's header.
//! - The same event sent twice (same `id` and `source`) makes a record with the same key and
//!   idempotency key, which the pipeline deduplicates: retrying a request is always safe.
//! - Keys, limits and metrics: [`keys`], [`limits`], [`metrics`].

pub mod convert;
mod events;
pub mod keys;
pub mod limits;
pub mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::schema_registry::SchemaRegistrySettings;
use backbone_core::KafkaSettings;
use backbone_schemas::contracts::ContractSet;
use backbone_schemas::manifest::Manifest;
use backbone_schemas::registry::RegistryClient;
use backbone_schemas::RegistryAccess;
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::convert::Converter;
use crate::keys::KeySet;
use crate::limits::{Admission, Allowance};
use crate::metrics::IngestMetrics;

/// Longest wait for the registry to tell a contract's id.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[ingest]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Address of the API, `/metrics` and `/health`.
    pub listen: SocketAddr,
    /// The producers' keys (`ingest keys create` writes it).
    pub keys_file: PathBuf,
    /// How often the keys file is checked for changes (a revoked key is refused from then on).
    #[serde(with = "humantime_serde")]
    pub keys_reload_interval: Duration,
    /// Largest request body taken.
    pub max_request_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Events per second per key, unless the key says otherwise.
    pub rate_per_second: f64,
    /// Events a key may send at once after a quiet spell.
    pub burst: u64,
    /// Events per key per UTC day, unless the key says otherwise.
    pub daily_quota: u64,
    /// Longest wait for the broker's acknowledgement; then the request answers 503.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// The deployed name of a manifest topic where it differs (an environment's prefix); its
    /// subject follows, `<name>-value`.
    pub topic_names: BTreeMap<String, String>,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            keys_file: PathBuf::from("ingest-keys.jsonl"),
            keys_reload_interval: Duration::from_secs(1),
            max_request_bytes: 1 << 20,
            max_batch_events: 1_000,
            rate_per_second: 10_000.0,
            burst: 20_000,
            daily_quota: 100_000_000,
            produce_timeout: Duration::from_secs(10),
            topic_names: BTreeMap::new(),
        }
    }
}

impl Validate for IngestSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: format!("ingest.{key}"),
                message,
            })
        };
        if self.keys_file.as_os_str().is_empty() {
            return invalid("keys_file", "must be a file path".to_owned());
        }
        if !(self.rate_per_second.is_finite() && self.rate_per_second > 0.0) {
            return invalid(
                "rate_per_second",
                format!("must be a positive number, got {}", self.rate_per_second),
            );
        }
        if self.max_batch_events == 0 {
            return invalid("max_batch_events", "must be at least 1".to_owned());
        }
        if self.burst < self.max_batch_events as u64 {
            return invalid(
                "burst",
                format!(
                    "must hold a whole batch (max_batch_events = {}), got {}",
                    self.max_batch_events, self.burst
                ),
            );
        }
        if self.max_request_bytes < 1_024 {
            return invalid(
                "max_request_bytes",
                format!("must be at least 1024, got {}", self.max_request_bytes),
            );
        }
        if self.produce_timeout < Duration::from_millis(100) {
            return invalid("produce_timeout", "must be at least 100ms".to_owned());
        }
        Ok(())
    }
}

/// The gateway's config file: `[kafka]`, `[schema_registry]` and `[ingest]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// The cluster events are produced to.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// Where the contracts' schema ids are looked up.
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    /// The gateway itself.
    #[serde(default)]
    pub ingest: IngestSettings,
}

impl Validate for IngestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.schema_registry.validate()?;
        self.ingest.validate()
    }
}

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A setting that cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The keys file.
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// The contracts compiled in do not parse (a build defect).
    #[error("contracts: {0}")]
    Contracts(String),
    /// The metrics could not be registered (a build defect).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The producer could not be made.
    #[error("kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// Where events of one type go.
pub(crate) struct Route {
    pub(crate) topic: String,
    pub(crate) subject: String,
    pub(crate) key_field: String,
    pub(crate) converter: Converter,
    /// The bundled contract text, looked up under `subject` for its id.
    pub(crate) text: String,
    /// The id, once the registry told it.
    pub(crate) id: Mutex<Option<u32>>,
}

/// The routes of every manifest topic open to the gateway, by event type.
fn routes(
    manifest: &Manifest,
    contracts: &ContractSet,
    names: &BTreeMap<String, String>,
) -> Result<HashMap<String, Arc<Route>>, IngestError> {
    if let Some(unknown) = names
        .keys()
        .find(|name| manifest.topic(name).is_none_or(|t| t.event_type.is_none()))
    {
        return Err(IngestError::Config(ConfigError::Invalid {
            key: "ingest.topic_names".to_owned(),
            message: format!("`{unknown}` is not a manifest topic open to the gateway"),
        }));
    }
    let mut routes = HashMap::new();
    for topic in &manifest.topic {
        let (Some(event_type), Some(key_field)) = (&topic.event_type, &topic.key_field) else {
            continue;
        };
        let file = contracts.by_path(&topic.value_schema).ok_or_else(|| {
            IngestError::Contracts(format!("no contract file {}", topic.value_schema))
        })?;
        let bundled = contracts
            .bundled(&file.name)
            .map_err(|e| IngestError::Contracts(e.to_string()))?;
        let schema = contracts
            .schema(&file.name)
            .map_err(|e| IngestError::Contracts(e.to_string()))?;
        let name = names.get(&topic.name).unwrap_or(&topic.name);
        let route = Route {
            topic: name.clone(),
            subject: format!("{name}-value"),
            key_field: key_field.clone(),
            converter: Converter::new(&schema)
                .map_err(|e| IngestError::Contracts(e.to_string()))?,
            text: bundled.to_string(),
            id: Mutex::new(None),
        };
        routes.insert(event_type.clone(), Arc::new(route));
    }
    Ok(routes)
}

/// What every request handler shares.
pub(crate) struct Gateway {
    pub(crate) settings: IngestSettings,
    pub(crate) keys: RwLock<Arc<KeySet>>,
    pub(crate) admission: Admission,
    pub(crate) routes: HashMap<String, Arc<Route>>,
    pub(crate) registry: RegistryClient,
    pub(crate) producer: FutureProducer,
    pub(crate) metrics: IngestMetrics,
}

impl Gateway {
    pub(crate) fn allowance(&self, key: &keys::ProducerKey) -> Allowance {
        Allowance {
            rate_per_second: key.rate_per_second.unwrap_or(self.settings.rate_per_second),
            burst: self.settings.burst,
            daily_quota: key.daily_quota.unwrap_or(self.settings.daily_quota),
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn serve(
    config: &IngestConfig,
    access: RegistryAccess,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), IngestError> {
    let manifest = Manifest::embedded().map_err(|e| IngestError::Contracts(e.to_string()))?;
    let contracts = ContractSet::embedded().map_err(|e| IngestError::Contracts(e.to_string()))?;
    let mut producer_config = config.kafka.producer_config();
    producer_config.set(
        "message.timeout.ms",
        config.ingest.produce_timeout.as_millis().to_string(),
    );
    let keys = KeySet::load(&config.ingest.keys_file)?;
    let metrics = IngestMetrics::new()?;
    let gateway = Arc::new(Gateway {
        settings: config.ingest.clone(),
        keys: RwLock::new(Arc::new(keys)),
        admission: Admission::default(),
        routes: routes(&manifest, &contracts, &config.ingest.topic_names)?,
        registry: RegistryClient::new(access, REGISTRY_TIMEOUT),
        producer: producer_config.create()?,
        metrics,
    });
    let reload = tokio::spawn(keys_reloader(Arc::clone(&gateway)));
    let address = listener.local_addr()?;
    tracing::info!(%address, types = ?gateway.routes.keys().collect::<Vec<_>>(), "ingest gateway serving");
    let served = axum::serve(listener, events::router(gateway))
        .with_graceful_shutdown(shutdown)
        .await;
    reload.abort();
    served.map_err(IngestError::Http)
}

/// Reads the keys file again whenever it changes; a file that turns bad keeps the keys last
/// read, with an error logged, rather than locking every producer out.
async fn keys_reloader(gateway: Arc<Gateway>) {
    let path = gateway.settings.keys_file.clone();
    let stamp = |path: &PathBuf| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(gateway.settings.keys_reload_interval);
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match KeySet::load(&path) {
            Ok(keys) => {
                tracing::info!(file = %path.display(), keys = keys.keys().count(), "keys file read again");
                if let Ok(mut current) = gateway.keys.write() {
                    *current = Arc::new(keys);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "keys file unreadable; the keys read before stay")
            }
        }
    }
}
