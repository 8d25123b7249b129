//! The whole backbone as separate processes, the way it is deployed: the four processors, the
//! four sinks, the lag monitor and the drift reconciler, each its own binary on its own metrics
//! port, on topics of their own on the shared broker, delivering to a sandbox served by the
//! test. A test can kill and restart any of them.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::{Delivery, KafkaSettings};
use backbone_testkit::{create_topic, shared_settings, unique_group, unique_topic, ChildProcess};

/// The binaries of a deployment, in start order.
pub const PROCESSORS: [&str; 4] = ["usage-validator", "enricher", "usage-rater", "fanout"];
/// The sinks.
pub const SINKS: [&str; 4] = ["billing-sink", "crm-sink", "erp-sink", "analytics-sink"];
/// The benchmarks' baseline: the runtime forwarding raw usage unchanged to [`Topics::copy`].
pub const PASS_THROUGH: &str = "pass-through";

/// A binary built next to this test's own (`make test` builds every binary first).
pub fn workspace_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name(name)
}

/// A port on 127.0.0.1 free when asked.
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Topic names of one deployment.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Raw usage.
    pub usage: String,
    /// Validated usage.
    pub validated: String,
    /// Customer accounts.
    pub accounts: String,
    /// Subscriptions.
    pub subscriptions: String,
    /// Rate cards.
    pub rate_cards: String,
    /// GL mappings.
    pub gl_mappings: String,
    /// Enriched usage.
    pub enriched: String,
    /// Rated lines.
    pub rated: String,
    /// Window aggregates.
    pub windows: String,
    /// Billing charges.
    pub billing: String,
    /// Analytics facts.
    pub analytics: String,
    /// Account health.
    pub crm: String,
    /// Ledger postings.
    pub erp: String,
    /// The fanout's repartition topic.
    pub by_customer: String,
    /// Delivery results of every sink.
    pub results: String,
}

impl Topics {
    /// Where loadgen publishes a workload into this deployment.
    pub fn destinations(&self) -> backbone_loadgen::Destinations<'_> {
        backbone_loadgen::Destinations {
            usage: &self.usage,
            accounts: &self.accounts,
            subscriptions: &self.subscriptions,
            rate_cards: &self.rate_cards,
            gl_mappings: &self.gl_mappings,
        }
    }

    /// Where the pass-through baseline copies raw usage to (created by the pass-through).
    pub fn copy(&self) -> String {
        format!("{}.copy", self.usage)
    }

    /// Fresh names, the inputs created (co-partitioned usage in 3, master data in 1), the
    /// usage and output topics stamped by `stamps`.
    pub async fn create(kafka: &KafkaSettings, stamps: Stamps) -> Topics {
        let t = Topics {
            usage: unique_topic("usage.events"),
            validated: unique_topic("usage.validated"),
            accounts: unique_topic("master.customer-accounts"),
            subscriptions: unique_topic("master.subscriptions"),
            rate_cards: unique_topic("master.rate-cards"),
            gl_mappings: unique_topic("master.gl-mappings"),
            enriched: unique_topic("usage.enriched"),
            rated: unique_topic("usage.rated"),
            windows: unique_topic("usage.window-aggregates"),
            billing: unique_topic("billing.charges"),
            analytics: unique_topic("analytics.facts"),
            crm: unique_topic("crm.account-health"),
            erp: unique_topic("erp.postings"),
            by_customer: unique_topic("usage.rated-by-customer"),
            results: unique_topic("delivery.results"),
        };
        let mut specs: Vec<TopicSpec> = [
            &t.usage,
            &t.validated,
            &t.accounts,
            &t.enriched,
            &t.rated,
            &t.windows,
            &t.billing,
            &t.analytics,
            &t.crm,
            &t.erp,
        ]
        .into_iter()
        .map(|topic| stamps.spec(topic, 3))
        .collect();
        for topic in [&t.subscriptions, &t.rate_cards, &t.gl_mappings] {
            specs.push(TopicSpec::new(topic, 1));
        }
        ensure_topics(kafka, &specs, Duration::from_secs(30))
            .await
            .expect("topics");
        // The drift reconciler reads the rater's dead letters from the start.
        create_topic(kafka, &format!("{}.dlq", t.enriched), 3)
            .await
            .expect("topic");
        t
    }
}

/// Which clock stamps the records of a deployment's usage and output topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamps {
    /// The producer's, when it sends the record (Kafka's `CreateTime`, the default).
    Producer,
    /// The broker's, when it appends the record (`LogAppendTime`): a latency measured from one
    /// topic to another then includes the last stage's batching and produce request, which
    /// the producer's clock leaves out.
    Append,
}

impl Stamps {
    /// A topic of `partitions` partitions stamped this way.
    pub fn spec(self, topic: &str, partitions: i32) -> TopicSpec {
        let spec = TopicSpec::new(topic, partitions);
        match self {
            Stamps::Producer => spec,
            Stamps::Append => spec.with_config("message.timestamp.type", "LogAppendTime"),
        }
    }
}

/// One process of the deployment.
struct Running {
    child: ChildProcess,
    restarts: u32,
}

/// A deployment of the whole backbone.
pub struct Deployment {
    /// Its topics.
    pub topics: Topics,
    /// Broker settings.
    pub kafka: KafkaSettings,
    /// Registry URL.
    pub registry_url: String,
    /// Sandbox URL (all three systems).
    pub sandbox_url: String,
    /// PostgreSQL for the analytics sink.
    pub postgres_url: String,
    /// Consumer group prefix: `<prefix>-<binary>`.
    pub group_prefix: String,
    /// State, ledgers and logs.
    pub dir: PathBuf,
    /// Metrics port per binary.
    pub ports: BTreeMap<&'static str, u16>,
    /// How the processors deliver: exactly-once needs a broker with transactions.
    pub delivery: Delivery,
    /// Whether the stages after the validator (rater, fanout) drop what they have seen. Off,
    /// with exactly-once delivery, only the transactions keep a redone input from counting
    /// twice.
    pub downstream_dedup: bool,
    running: BTreeMap<&'static str, Running>,
    kept: bool,
}

/// A run that passed leaves nothing behind; a failed one (the test is panicking, or the run
/// called [`Deployment::keep`]) keeps its state and logs under
/// `<tmp>/backbone-deployments/<group prefix>` for the post-mortem.
impl Drop for Deployment {
    fn drop(&mut self) {
        // Stop the processes first: they write into the directory.
        self.running.clear();
        if !self.kept && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Deployment {
    /// A deployment on fresh topics, delivering to the sandbox at `sandbox_url`; nothing runs
    /// yet.
    pub async fn create(
        name: &str,
        sandbox_url: &str,
        postgres_url: &str,
        registry_url: &str,
    ) -> Self {
        Self::create_on(
            shared_settings(),
            name,
            sandbox_url,
            postgres_url,
            registry_url,
            Stamps::Producer,
        )
        .await
    }

    /// [`create`](Self::create) on the broker of `kafka` instead of the shared test broker.
    pub async fn create_on(
        kafka: KafkaSettings,
        name: &str,
        sandbox_url: &str,
        postgres_url: &str,
        registry_url: &str,
        stamps: Stamps,
    ) -> Self {
        let topics = Topics::create(&kafka, stamps).await;
        let group_prefix = unique_group(name);
        let dir = std::env::temp_dir()
            .join("backbone-deployments")
            .join(&group_prefix);
        std::fs::create_dir_all(&dir).expect("deployment directory");
        let mut ports = BTreeMap::new();
        for binary in PROCESSORS
            .iter()
            .chain(SINKS.iter())
            .chain(["monitor", "drift", PASS_THROUGH].iter())
        {
            ports.insert(*binary, free_port());
        }
        Deployment {
            topics,
            kafka,
            registry_url: registry_url.to_owned(),
            sandbox_url: sandbox_url.to_owned(),
            postgres_url: postgres_url.to_owned(),
            group_prefix,
            dir,
            ports,
            delivery: Delivery::EffectivelyOnce,
            downstream_dedup: true,
            running: BTreeMap::new(),
            kept: false,
        }
    }

    /// The consumer group of `binary`.
    pub fn group(&self, binary: &str) -> String {
        format!("{}-{binary}", self.group_prefix)
    }

    /// Keeps the deployment's directory (state and logs) after it is dropped: for a run that
    /// failed without panicking.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// The metrics address of `binary`.
    pub fn metrics_address(&self, binary: &str) -> String {
        format!("127.0.0.1:{}", self.ports[binary])
    }

    /// Every binary's configuration, as environment overrides.
    pub fn env(&self, binary: &str) -> Vec<(String, String)> {
        let t = &self.topics;
        let mut env: Vec<(&str, String)> = vec![(
            "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
            self.kafka.bootstrap_servers.clone(),
        )];
        // The monitor reads offsets only; everything else decodes contracts.
        if binary != "monitor" {
            env.push(("BACKBONE__SCHEMA_REGISTRY__URL", self.registry_url.clone()));
        }
        let listen = self.metrics_address(binary);
        let state = self.dir.join("state").to_string_lossy().into_owned();
        let processor = |env: &mut Vec<(&str, String)>| {
            env.push(("BACKBONE__KAFKA__SESSION_TIMEOUT", "6s".to_owned()));
            env.push(("BACKBONE__KAFKA__COMMIT_INTERVAL", "200ms".to_owned()));
            env.push(("BACKBONE__RUNTIME__GROUP_ID", self.group(binary)));
            env.push(("BACKBONE__RUNTIME__STATE__DIR", state.clone()));
            env.push(("BACKBONE__OBSERVABILITY__LISTEN", listen.clone()));
            env.push((
                "BACKBONE__OBSERVABILITY__STATISTICS_INTERVAL",
                "1s".to_owned(),
            ));
            if self.delivery == Delivery::ExactlyOnce {
                env.push(("BACKBONE__RUNTIME__DELIVERY", "exactly-once".to_owned()));
                // One instance per binary: its id is kept across restarts, so a restart
                // fences what the killed run left open.
                env.push((
                    "BACKBONE__RUNTIME__TRANSACTION__TRANSACTIONAL_ID",
                    format!("{}-0", self.group(binary)),
                ));
            }
        };
        let sink = |env: &mut Vec<(&str, String)>, topic: &str| {
            env.push(("BACKBONE__KAFKA__SESSION_TIMEOUT", "6s".to_owned()));
            env.push(("BACKBONE__KAFKA__COMMIT_INTERVAL", "200ms".to_owned()));
            env.push(("BACKBONE__RUNTIME__GROUP_ID", self.group(binary)));
            env.push(("BACKBONE__RUNTIME__LEDGER_DIR", state.clone()));
            env.push(("BACKBONE__RUNTIME__RESULTS_TOPIC", t.results.clone()));
            env.push(("BACKBONE__RUNTIME__LINGER", "50ms".to_owned()));
            env.push(("BACKBONE__OBSERVABILITY__LISTEN", listen.clone()));
            env.push((
                "BACKBONE__OBSERVABILITY__STATISTICS_INTERVAL",
                "1s".to_owned(),
            ));
            env.push(("BACKBONE__SINK__TOPIC", topic.to_owned()));
            env.push(("BACKBONE__DESTINATION__URL", self.sandbox_url.clone()));
            env.push((
                "BACKBONE__DESTINATION__CREDENTIAL",
                "sandbox-token".to_owned(),
            ));
        };
        match binary {
            PASS_THROUGH => {
                processor(&mut env);
                env.push(("BACKBONE__PROCESSOR__INPUT_TOPIC", t.usage.clone()));
                env.push(("BACKBONE__PROCESSOR__OUTPUT_TOPIC", t.copy()));
            }
            "usage-validator" => {
                processor(&mut env);
                env.push(("BACKBONE__PROCESSOR__INPUT_TOPIC", t.usage.clone()));
                env.push(("BACKBONE__PROCESSOR__OUTPUT_TOPIC", t.validated.clone()));
            }
            "enricher" => {
                processor(&mut env);
                env.push(("BACKBONE__PROCESSOR__USAGE_TOPIC", t.validated.clone()));
                env.push(("BACKBONE__PROCESSOR__ACCOUNTS_TOPIC", t.accounts.clone()));
                env.push((
                    "BACKBONE__PROCESSOR__SUBSCRIPTIONS_TOPIC",
                    t.subscriptions.clone(),
                ));
                env.push((
                    "BACKBONE__PROCESSOR__RATE_CARDS_TOPIC",
                    t.rate_cards.clone(),
                ));
                env.push(("BACKBONE__PROCESSOR__OUTPUT_TOPIC", t.enriched.clone()));
                env.push(("BACKBONE__PROCESSOR__PARK_TIMEOUT", "3s".to_owned()));
            }
            "usage-rater" => {
                processor(&mut env);
                env.push(("BACKBONE__PROCESSOR__INPUT_TOPIC", t.enriched.clone()));
                env.push((
                    "BACKBONE__PROCESSOR__RATE_CARDS_TOPIC",
                    t.rate_cards.clone(),
                ));
                env.push(("BACKBONE__PROCESSOR__OUTPUT_TOPIC", t.rated.clone()));
                env.push(("BACKBONE__PROCESSOR__AGGREGATES_TOPIC", t.windows.clone()));
                if !self.downstream_dedup {
                    env.push(("BACKBONE__PROCESSOR__DEDUP", "false".to_owned()));
                }
            }
            "fanout" => {
                processor(&mut env);
                if !self.downstream_dedup {
                    env.push(("BACKBONE__PROCESSOR__DEDUP", "false".to_owned()));
                }
                env.push(("BACKBONE__PROCESSOR__RATED_TOPIC", t.rated.clone()));
                env.push(("BACKBONE__PROCESSOR__AGGREGATES_TOPIC", t.windows.clone()));
                env.push((
                    "BACKBONE__PROCESSOR__GL_MAPPINGS_TOPIC",
                    t.gl_mappings.clone(),
                ));
                env.push((
                    "BACKBONE__PROCESSOR__BY_CUSTOMER_TOPIC",
                    t.by_customer.clone(),
                ));
                env.push(("BACKBONE__PROCESSOR__ROUTES__BILLING", t.billing.clone()));
                env.push((
                    "BACKBONE__PROCESSOR__ROUTES__ANALYTICS",
                    t.analytics.clone(),
                ));
                env.push(("BACKBONE__PROCESSOR__ROUTES__CRM", t.crm.clone()));
                env.push(("BACKBONE__PROCESSOR__ROUTES__ERP", t.erp.clone()));
            }
            "billing-sink" => sink(&mut env, &t.billing),
            "crm-sink" => {
                sink(&mut env, &t.crm);
                // As deployed (deploy/config): the CRM takes 200 upserts a request.
                env.push(("BACKBONE__RUNTIME__BATCH_MAX", "200".to_owned()));
            }
            "erp-sink" => {
                sink(&mut env, &t.erp);
                env.push(("BACKBONE__SINK__WINDOW", "2s".to_owned()));
                env.push(("BACKBONE__SINK__GRACE", "1s".to_owned()));
            }
            "analytics-sink" => {
                sink(&mut env, &t.analytics);
                // As deployed (deploy/config): a batch is one transaction, and at the runtime's
                // default of 100 facts the per-batch round trips cap the sink near 700 facts/s.
                env.push(("BACKBONE__RUNTIME__BATCH_MAX", "500".to_owned()));
                let (url, password) = backbone_sink::settings::split_password(&self.postgres_url);
                env.retain(|(k, _)| !k.starts_with("BACKBONE__DESTINATION__"));
                env.push(("BACKBONE__DESTINATION__URL", url));
                env.push((
                    "BACKBONE__DESTINATION__CREDENTIAL",
                    password.map(|p| p.expose().to_owned()).unwrap_or_default(),
                ));
                env.push((
                    "BACKBONE__SINK__SCHEMA",
                    self.group_prefix.replace(['-', '.'], "_"),
                ));
            }
            "monitor" => {
                let groups: Vec<String> = PROCESSORS
                    .iter()
                    .chain(SINKS.iter())
                    .map(|b| format!("\"{}\"", self.group(b)))
                    .collect();
                env.push((
                    "BACKBONE__MONITOR__GROUPS",
                    format!("[{}]", groups.join(", ")),
                ));
                env.push(("BACKBONE__MONITOR__DISCOVER", "false".to_owned()));
                env.push(("BACKBONE__MONITOR__INTERVAL", "1s".to_owned()));
                env.push(("BACKBONE__MONITOR__LISTEN", listen));
            }
            "drift" => {
                env.push(("BACKBONE__DRIFT__ENRICHED_TOPIC", t.enriched.clone()));
                env.push((
                    "BACKBONE__DRIFT__ENRICHED_DLQ_TOPIC",
                    format!("{}.dlq", t.enriched),
                ));
                env.push(("BACKBONE__DRIFT__RATED_TOPIC", t.rated.clone()));
                env.push(("BACKBONE__DRIFT__ACCOUNTS_TOPIC", t.accounts.clone()));
                env.push(("BACKBONE__DRIFT__GL_MAPPINGS_TOPIC", t.gl_mappings.clone()));
                env.push(("BACKBONE__DRIFT__BILLING_URL", self.sandbox_url.clone()));
                env.push(("BACKBONE__DRIFT__CRM_URL", self.sandbox_url.clone()));
                env.push(("BACKBONE__DRIFT__ERP_URL", self.sandbox_url.clone()));
                env.push(("BACKBONE__DRIFT__INTERVAL", "1s".to_owned()));
                env.push(("BACKBONE__DRIFT__LISTEN", listen));
            }
            other => panic!("no configuration for `{other}`"),
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Starts `binary` (again, after a kill).
    pub fn start(&mut self, binary: &'static str) {
        let env = self.env(binary);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let restarts = self.running.get(binary).map_or(0, |r| r.restarts + 1);
        let log = self.dir.join(format!("{binary}.{restarts}.log"));
        let args: &[&str] = if binary == "drift" { &["serve"] } else { &[] };
        let child = ChildProcess::spawn(&workspace_binary(binary), args, &env, Some(&log))
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        self.running.insert(binary, Running { child, restarts });
    }

    /// Starts again every binary that was started and has since exited on its own (a
    /// processor stops on some broker errors and counts on its supervisor), as a supervisor
    /// would; returns which.
    pub fn revive(&mut self) -> Vec<&'static str> {
        let exited: Vec<&'static str> = self
            .running
            .iter_mut()
            .filter_map(|(binary, r)| (!r.child.is_running()).then_some(*binary))
            .collect();
        for binary in &exited {
            self.start(binary);
        }
        exited
    }

    /// Starts every processor and sink.
    pub fn start_pipeline(&mut self) {
        for binary in PROCESSORS.iter().chain(SINKS.iter()) {
            self.start(binary);
        }
    }

    /// SIGKILLs `binary`.
    pub fn kill(&mut self, binary: &str) {
        if let Some(running) = self.running.get_mut(binary) {
            running.child.crash().expect("SIGKILL");
        }
    }

    /// The process id of `binary`'s latest run, if it was started.
    pub fn pid(&self, binary: &str) -> Option<u32> {
        self.running.get(binary).map(|r| r.child.pid())
    }

    /// SIGTERMs `binary` and waits up to `timeout` for it to exit.
    pub fn stop(&mut self, binary: &str, timeout: Duration) {
        if let Some(running) = self.running.get_mut(binary) {
            running.child.stop(timeout).expect("a graceful exit");
        }
    }

    /// Whether `binary` is running.
    pub fn is_running(&mut self, binary: &str) -> bool {
        self.running
            .get_mut(binary)
            .is_some_and(|r| r.child.is_running())
    }

    /// The log of `binary`'s latest run, for failure messages.
    pub fn log(&self, binary: &str) -> String {
        let restarts = self.running.get(binary).map_or(0, |r| r.restarts);
        std::fs::read_to_string(self.dir.join(format!("{binary}.{restarts}.log")))
            .unwrap_or_default()
    }
}
