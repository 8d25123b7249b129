//! What the sink tests share: an in-process sandbox on a real port, sinks run in-process
//! against the shared broker and registry, and waits with deadlines.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backbone_core::endpoint::ObservabilitySettings;
use backbone_core::https::TlsFiles;
use backbone_core::metrics::RuntimeMetrics;
use backbone_core::KafkaSettings;
use backbone_core::Secret;
use backbone_sandbox::{SandboxClient, SandboxConfig};
use backbone_schemas::types::{
    BillingCharge, BillingChargeType, Contract, DeliveryResult, EventMetadata, TraceContext,
};
use backbone_schemas::WireCodec;
use backbone_sink::metrics::SinkMetrics;
use backbone_sink::settings::{CircuitSettings, RetrySettings};
use backbone_sink::{
    run, DestinationSettings, RunContext, Sink, SinkError, SinkSettings, SinkSummary,
};
use backbone_testkit::{
    consume_until, end_offsets_total, shared_settings, unique_group, unique_topic, TestCa,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The registry `make test` started.
pub fn registry_url() -> String {
    std::env::var("BACKBONE_TEST_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned())
}

/// A sandbox served on a free port of 127.0.0.1 for the length of a test.
pub struct Sandbox {
    /// Its base URL.
    pub url: String,
    /// A client with the configured token.
    pub client: SandboxClient,
    /// The CA that signed its certificate, when it serves HTTPS.
    pub ca_file: Option<PathBuf>,
    _stop: oneshot::Sender<()>,
}

impl Sandbox {
    /// Starts a sandbox with `config` (its `listen` is replaced by a free port).
    pub async fn start(config: SandboxConfig) -> Sandbox {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a free port");
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(backbone_sandbox::serve(listener, config, async {
            let _ = stopped.await;
        }));
        Sandbox {
            client: SandboxClient::new(url.clone()),
            url,
            ca_file: None,
            _stop: stop,
        }
    }

    /// [`start`](Self::start) serving HTTPS with a certificate `ca` issues; its client and
    /// [`destination`](Self::destination) trust `ca`.
    pub async fn start_https(config: SandboxConfig, ca: &TestCa) -> Sandbox {
        Self::start_tls(config, ca, None).await
    }

    /// [`Sandbox::start_https`], wanting a client certificate issued by `ca` (mutual TLS). Its
    /// own admin client has none, so only deliveries reach it.
    pub async fn start_mutual_tls(config: SandboxConfig, ca: &TestCa) -> Sandbox {
        Self::start_tls(config, ca, Some(ca.cert())).await
    }

    async fn start_tls(
        mut config: SandboxConfig,
        ca: &TestCa,
        client_ca_file: Option<PathBuf>,
    ) -> Sandbox {
        let issued = ca.issue("sandbox").expect("a sandbox certificate");
        config.tls = Some(TlsFiles {
            cert_file: issued.cert,
            key_file: issued.key,
            client_ca_file,
        });
        let mut sandbox = Self::start(config).await;
        let ca_pem = std::fs::read(ca.cert()).expect("the CA certificate");
        sandbox.client = sandbox
            .client
            .trusting(&ca_pem)
            .expect("a client trusting the CA");
        sandbox.ca_file = Some(ca.cert());
        sandbox
    }

    /// Where a sink reaches it, with the sandbox's default token.
    pub fn destination(&self) -> DestinationSettings {
        DestinationSettings {
            url: self.url.clone(),
            credential: Secret::new("sandbox-token"),
            ca_file: self.ca_file.clone(),
            ..DestinationSettings::default()
        }
    }

    /// Requests the sandbox answered for `system` with `status`.
    pub async fn answered(&self, system: &str, status: u16) -> u64 {
        let stats = self.client.stats().await.expect("sandbox stats");
        stats
            .pointer(&format!("/{system}/{status}"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }

    /// Requests the sandbox applied for `system`.
    pub async fn applied(&self, system: &str) -> u64 {
        let stats = self.client.stats().await.expect("sandbox stats");
        stats
            .pointer(&format!("/applied/{system}"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }
}

/// Topics and group of one sink under test.
pub struct SinkTopics {
    /// Input topic.
    pub input: String,
    /// Where `DeliveryResult`s go.
    pub results: String,
    /// Consumer group.
    pub group: String,
    /// Ledger root.
    pub ledger_dir: PathBuf,
}

impl SinkTopics {
    /// Fresh names for a test called `name`, with `partitions` input partitions created.
    pub async fn create(name: &str, partitions: i32) -> SinkTopics {
        let topics = SinkTopics::named(name);
        backbone_testkit::create_topic(&shared_settings(), &topics.input, partitions)
            .await
            .expect("create the input topic");
        topics
    }

    /// Fresh names for a test called `name`; nothing created.
    pub fn named(name: &str) -> SinkTopics {
        SinkTopics {
            input: unique_topic(name),
            results: unique_topic(&format!("{name}-results")),
            group: unique_group(name),
            ledger_dir: std::env::temp_dir()
                .join("backbone-ledgers")
                .join(unique_group(name)),
        }
    }

    /// Sink settings for these topics: short linger, quick retries, a circuit that opens
    /// after three failed attempts for one second.
    pub fn settings(&self) -> SinkSettings {
        SinkSettings {
            group_id: Some(self.group.clone()),
            batch_max: 50,
            linger: Duration::from_millis(50),
            tick: Duration::from_millis(100),
            ledger_dir: self.ledger_dir.clone(),
            results_topic: self.results.clone(),
            retry: RetrySettings {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(300),
                max_retry_after: Duration::from_secs(2),
            },
            circuit: CircuitSettings {
                failure_threshold: 3,
                open_for: Duration::from_secs(1),
            },
            ..SinkSettings::default()
        }
    }
}

/// A sink running in-process until stopped.
pub struct RunningSink {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<SinkSummary, SinkError>>,
    registry: prometheus::Registry,
}

impl RunningSink {
    /// Starts `sink` with `settings` on the shared broker and registry.
    pub fn start<S: Sink>(sink: S, settings: SinkSettings) -> RunningSink {
        RunningSink::start_with(sink, settings, shared_settings())
    }

    /// [`start`](Self::start) with client settings of the test's own.
    pub fn start_with<S: Sink>(
        sink: S,
        settings: SinkSettings,
        kafka: KafkaSettings,
    ) -> RunningSink {
        let registry = prometheus::Registry::new();
        let name = sink.name().to_owned();
        let metrics = Arc::new(RuntimeMetrics::new(&registry, &name).expect("runtime metrics"));
        let sink_metrics =
            Arc::new(SinkMetrics::new(&registry, &name, "test").expect("sink metrics"));
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let observability = ObservabilitySettings {
                statistics_interval: Duration::from_millis(500),
                ..ObservabilitySettings::default()
            };
            let context = RunContext {
                kafka: &kafka,
                settings: &settings,
                observability: &observability,
                codec: WireCodec::new(registry_url()),
                metrics,
                sink_metrics,
            };
            run(sink, context, async {
                let _ = stopped.await;
            })
            .await
        });
        RunningSink {
            stop: Some(stop),
            handle,
            registry,
        }
    }

    /// The value of the series `name` with the given label, or 0 when absent.
    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .filter(|metric| {
                label.is_none_or(|(key, value)| {
                    metric
                        .get_label()
                        .iter()
                        .any(|l| l.name() == key && l.value() == value)
                })
            })
            // A gauge's counter part reads 0 and the other way round.
            .map(|metric| metric.get_gauge().get_value() + metric.get_counter().get_value())
            .sum()
    }

    /// Whether the sink has stopped on its own.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Asks the sink to stop and returns its summary.
    pub async fn stop(mut self) -> SinkSummary {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the sink stops within a minute")
            .expect("the sink task")
            .expect("the sink stops cleanly")
    }

    /// Waits for the sink to stop on its own, for at most `deadline`.
    pub async fn finished(self, deadline: Duration) -> Result<SinkSummary, SinkError> {
        tokio::time::timeout(deadline, self.handle)
            .await
            .expect("the sink stops on its own")
            .expect("the sink task")
    }
}

/// Encodes `value` for `topic` through the registry.
pub async fn encode<T: Contract>(codec: &WireCodec, topic: &str, value: &T) -> Vec<u8> {
    codec
        .encode_contract(&format!("{topic}-value"), value)
        .await
        .expect("encode through the registry")
}

/// Polls `check` until it returns `Some`, failing the test after `deadline` with `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Charge number `n` of `tenant` for API calls, under `rating_id`: quantity `n + 1`, amount
/// `n + 1.25` in `currency`, on customer and subscription `n % customers`.
pub fn api_charge(
    tenant: &str,
    rating_id: String,
    n: usize,
    customers: usize,
    currency: &str,
) -> BillingCharge {
    BillingCharge {
        metadata: metadata(tenant, &rating_id, "backbone.billing.charge"),
        rating_id,
        revision: 1,
        charge_type: BillingChargeType::Usage,
        customer_id: format!("c-{}", n % customers),
        subscription_id: format!("s-{}", n % customers),
        charge_id: "api-calls".to_owned(),
        group_key: "api".to_owned(),
        description: "API calls".to_owned(),
        period_start: 20_600,
        period_end: 20_630,
        quantity: format!("{}", n + 1).parse().expect("quantity"),
        amount: format!("{}.25", n + 1).parse().expect("amount"),
        currency: currency.to_owned(),
        billing_account_ref: None,
    }
}

/// An envelope for test events of type `kind`.
pub fn metadata(tenant: &str, event_id: &str, kind: &str) -> EventMetadata {
    EventMetadata {
        tenant_id: tenant.to_owned(),
        event_id: event_id.to_owned(),
        source: "fanout".to_owned(),
        r#type: kind.to_owned(),
        occurred_at: 1_790_000_000_000_000,
        produced_at: 1_790_000_000_000_000,
        trace: TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: None,
        },
        schema_version: None,
    }
}

/// The first `count` delivery results on `topic`, decoded.
pub async fn results(codec: &WireCodec, topic: &str, count: usize) -> Vec<DeliveryResult> {
    let records =
        backbone_testkit::consume_until(&shared_settings(), topic, count, Duration::from_secs(120))
            .await
            .expect("delivery results");
    let mut decoded = Vec::with_capacity(records.len());
    for record in &records {
        let value = record.value.as_deref().expect("value");
        decoded.push(
            codec
                .decode_as(value, DeliveryResult::schema())
                .await
                .expect("decode a delivery result"),
        );
    }
    decoded
}

/// Publishes `values` (encoded for `topic`) keyed by `keys`, with optional timestamps.
pub async fn publish<T: Contract>(
    codec: &WireCodec,
    topic: &str,
    values: &[(String, T, Option<i64>)],
) -> Vec<backbone_testkit::TestRecord> {
    let mut records = Vec::with_capacity(values.len());
    for (key, value, timestamp_ms) in values {
        let bytes = encode(codec, topic, value).await;
        records.push(backbone_testkit::TestRecord {
            timestamp_ms: *timestamp_ms,
            ..backbone_testkit::TestRecord::new(key.clone(), bytes)
        });
    }
    backbone_testkit::produce(&shared_settings(), topic, &records)
        .await
        .expect("produce");
    records
}

/// Every record on `topic` now, decoded as `T`.
pub async fn read_all<T: Contract + serde::de::DeserializeOwned>(
    codec: &WireCodec,
    topic: &str,
) -> Vec<T> {
    let settings = shared_settings();
    // A topic a process just created may not have settled metadata yet.
    let end = eventually(
        Duration::from_secs(180),
        "the topic's end offsets",
        || async { end_offsets_total(&settings, topic).ok() },
    )
    .await;
    let records = consume_until(
        &settings,
        topic,
        usize::try_from(end).unwrap_or(0),
        Duration::from_secs(180),
    )
    .await
    .expect("records");
    let mut values = Vec::with_capacity(records.len());
    for record in records {
        let value = record.value.expect("a value");
        values.push(codec.decode_as(&value, T::schema()).await.expect("decode"));
    }
    values
}
