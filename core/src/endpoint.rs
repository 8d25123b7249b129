//! The HTTP endpoint every process serves: `/metrics` (Prometheus text), `/health` (the
//! process runs) and `/ready` (every assigned partition is restored), configured by the
//! `[observability]` section.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{IntGauge, Registry};
use rdkafka::ClientConfig;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::config::{ConfigError, Validate};
use crate::metrics;

/// The endpoint served on a task of its own until [`stop`](Self::stop).
#[derive(Debug)]
pub struct RunningEndpoint {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningEndpoint {
    /// Binds `listen` and serves `registry` and `readiness` there. A failure to bind is a
    /// config error naming `key`, the setting that gave the address.
    pub async fn start(
        key: &str,
        listen: SocketAddr,
        registry: Registry,
        readiness: Readiness,
    ) -> Result<Self, ConfigError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|err| ConfigError::Invalid {
                key: key.to_owned(),
                message: format!("cannot listen on {listen}: {err}"),
            })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, registry, readiness, async {
            let _ = stopped.await;
        }));
        Ok(Self { stop, task })
    }

    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Content type of the Prometheus text exposition format served on `/metrics`.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `[observability]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilitySettings {
    /// Address of the `/metrics`, `/health` and `/ready` endpoint; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How often librdkafka reports the statistics that consumer lag is read from.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
}

impl Default for ObservabilitySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            statistics_interval: Duration::from_secs(5),
        }
    }
}

impl ObservabilitySettings {
    /// Turns on librdkafka's statistics at `statistics_interval`, for
    /// [`MeteredContext`](crate::metrics::MeteredContext) to read lag from.
    pub fn enable_statistics<'a>(&self, config: &'a mut ClientConfig) -> &'a mut ClientConfig {
        config.set(
            "statistics.interval.ms",
            self.statistics_interval.as_millis().to_string(),
        )
    }
}

impl Validate for ObservabilitySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        // librdkafka accepts 0 (off) to 1 day; off would leave the lag gauges empty.
        let range = Duration::from_millis(100)..=Duration::from_secs(86_400);
        if !range.contains(&self.statistics_interval) {
            return Err(ConfigError::Invalid {
                key: "observability.statistics_interval".to_owned(),
                message: format!(
                    "must be between 100ms and 1day, got {}",
                    humantime_serde::re::humantime::format_duration(self.statistics_interval)
                ),
            });
        }
        Ok(())
    }
}

/// Whether every partition assigned to this process is restored and being processed: `/ready`
/// answers 200 only then. Cheap to clone; clones share the flag. The runtime clears it when a
/// rebalance starts and sets it once the new assignment's state is restored.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug, Default)]
struct ReadinessInner {
    ready: AtomicBool,
    /// `backbone_processor_ready`, moved together with the flag.
    gauge: Option<IntGauge>,
    processor: String,
}

impl Readiness {
    /// A flag that starts not ready and is tied to no gauge (use
    /// [`RuntimeMetrics::readiness`](crate::metrics::RuntimeMetrics::readiness) in a process).
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag moving `gauge` with it, logging its changes as `processor`'s.
    pub(crate) fn tracked_by(processor: &str, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            inner: Arc::new(ReadinessInner {
                ready: AtomicBool::new(false),
                gauge: Some(gauge),
                processor: processor.to_owned(),
            }),
        }
    }

    /// Marks the process ready (every assigned partition restored) or not.
    pub fn set_ready(&self, ready: bool) {
        let inner = &self.inner;
        let was = inner.ready.swap(ready, Ordering::SeqCst);
        if let Some(gauge) = &inner.gauge {
            gauge.set(i64::from(ready));
        }
        match (was, ready) {
            (false, true) => {
                tracing::info!(processor = %inner.processor, "ready: assigned partitions restored")
            }
            (true, false) => {
                tracing::info!(processor = %inner.processor, "not ready: partitions being reassigned or restored")
            }
            _ => {}
        }
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Endpoint {
    registry: Registry,
    readiness: Readiness,
}

/// The endpoint's routes, for embedding them in another router.
pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Endpoint {
            registry,
            readiness,
        })
}

/// Serves the endpoint on `listener` until `shutdown` completes. Bind the listener first
/// (`TcpListener::bind(settings.listen)`) and read its `local_addr()` to learn the port when
/// the configured one is 0.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "metrics and health endpoint serving");
    axum::serve(listener, router(registry, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(endpoint): State<Endpoint>) -> Response {
    match metrics::encode(&endpoint.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], text).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "metrics could not be encoded");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded\n",
            )
                .into_response()
        }
    }
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: assigned partitions not restored\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_from;
    use crate::metrics::{names, RuntimeMetrics};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        observability: ObservabilitySettings,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            self.observability.validate()
        }
    }

    fn load(env: &[(&str, &str)]) -> Result<Sample, ConfigError> {
        load_from(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn settings_default_and_override() {
        let defaults = load(&[]).unwrap().observability;
        assert_eq!(defaults.listen, SocketAddr::from(([127, 0, 0, 1], 9464)));
        assert_eq!(defaults.statistics_interval, Duration::from_secs(5));

        let set = load(&[
            ("BACKBONE__OBSERVABILITY__LISTEN", "127.0.0.1:0"),
            ("BACKBONE__OBSERVABILITY__STATISTICS_INTERVAL", "1s"),
        ])
        .unwrap()
        .observability;
        assert_eq!(set.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut config = ClientConfig::new();
        set.enable_statistics(&mut config);
        assert_eq!(config.get("statistics.interval.ms"), Some("1000"));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let err = load(&[("BACKBONE__OBSERVABILITY__LISTEN", "localhost")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key `observability.listen`"),
            "{err}"
        );
        let err = load(&[("BACKBONE__OBSERVABILITY__STATISTICS_INTERVAL", "0s")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `observability.statistics_interval`: must be between 100ms and 1day, got 0s"
        );
        let err = load(&[("BACKBONE__OBSERVABILITY__PORT", "1")]).unwrap_err();
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let registry = Registry::new();
        let metrics = RuntimeMetrics::new(&registry, "usage-rater").unwrap();
        metrics.record_consumed("usage.events", 0);
        let readiness = metrics.readiness();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, registry, readiness.clone(), async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("{base}{path}")).send();

        assert_eq!(get("/health").await.unwrap().status(), 200);
        assert_eq!(get("/ready").await.unwrap().status(), 503);
        readiness.set_ready(true);
        assert_eq!(get("/ready").await.unwrap().status(), 200);

        let scrape = get("/metrics").await.unwrap();
        assert_eq!(scrape.status(), 200);
        assert_eq!(
            scrape.headers()[header::CONTENT_TYPE.as_str()],
            TEXT_CONTENT_TYPE
        );
        let text = scrape.text().await.unwrap();
        assert!(
            text.contains(&format!(
                r#"{}{{partition="0",processor="usage-rater",topic="usage.events"}} 1"#,
                names::CONSUMER_RECORDS
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"{}{{processor="usage-rater"}} 1"#,
                names::PROCESSOR_READY
            )),
            "{text}"
        );
        assert_eq!(get("/nothing").await.unwrap().status(), 404);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
