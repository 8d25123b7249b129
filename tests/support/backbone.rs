//! The whole backbone as separate processes, the way it is deployed: the processors and sinks
//! of components.toml, the lag monitor and the drift reconciler, each its own binary on its own
//! metrics port, on topics of their own on the shared broker, delivering to a sandbox served by
//! the test. A test can kill and restart any of them. A stage's topics and settings come from
//! its entry in the list, so a new processor or sink runs here without a line changed.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbone_components::{env_var, Destination, Kind};
use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::{Delivery, KafkaSettings};
use backbone_testkit::{create_topic, shared_settings, unique_group, unique_topic, ChildProcess};

/// The processors, in start order (components.toml).
pub fn processors() -> Vec<&'static str> {
    backbone_components::processors()
        .map(|c| c.name.as_str())
        .collect()
}

/// The sinks (components.toml).
pub fn sinks() -> Vec<&'static str> {
    backbone_components::sinks()
        .map(|c| c.name.as_str())
        .collect()
}

/// The processors, then the sinks.
pub fn stages() -> Vec<&'static str> {
    backbone_components::stages()
        .map(|c| c.name.as_str())
        .collect()
}
/// The benchmarks' baseline: the runtime forwarding raw usage unchanged to [`Topics::copy`].
pub const PASS_THROUGH: &str = "pass-through";

/// A binary built next to this test's own (`make test` builds every binary first).
pub fn workspace_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name(name)
}

/// A port on 127.0.0.1 free when asked, never the same one twice in this process, and below
/// the range the kernel hands out to outgoing connections (`ip_local_port_range`, 32768 and up
/// on Linux): a port from that range can be taken by any client socket (a consumer's connection
/// to the broker) between this call and the process that binds it, which then cannot start.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (floor, ceiling) = (20_000u16, ephemeral.max(21_000));
    let span = u32::from(ceiling - floor);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id() ^ nanos) % span;
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    (0..span)
        .map(|offset| floor + u16::try_from((start + offset) % span).unwrap_or(0))
        .find(|port| {
            !given.contains(port)
                && TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], *port))).is_ok()
        })
        .inspect(|port| {
            given.insert(*port);
        })
        .expect("a free port below the ephemeral range")
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
    /// Every topic of the component list, by its deployed name.
    pub by_name: BTreeMap<String, String>,
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

    /// This deployment's name of the topic deployed as `topic`.
    pub fn name(&self, topic: &str) -> &str {
        self.by_name
            .get(topic)
            .unwrap_or_else(|| panic!("`{topic}` is no topic of components.toml"))
    }

    /// Fresh names for every topic of the component list, the inputs created (co-partitioned
    /// usage and the master data read as a stream in 3, other master data in 1), the usage and
    /// output topics stamped by `stamps`.
    pub async fn create(kafka: &KafkaSettings, stamps: Stamps) -> Topics {
        let mut by_name = BTreeMap::new();
        for component in backbone_components::all() {
            for (_, topic) in component.topic_settings() {
                by_name
                    .entry(topic.to_owned())
                    .or_insert_with(|| unique_topic(topic));
            }
        }
        let name = |topic: &str| by_name[topic].clone();
        let t = Topics {
            usage: name("usage.events"),
            validated: name("usage.validated"),
            accounts: name("master.customer-accounts"),
            subscriptions: name("master.subscriptions"),
            rate_cards: name("master.rate-cards"),
            gl_mappings: name("master.gl-mappings"),
            enriched: name("usage.enriched"),
            rated: name("usage.rated"),
            windows: name("usage.window-aggregates"),
            billing: name("billing.charges"),
            analytics: name("analytics.facts"),
            crm: name("crm.account-health"),
            erp: name("erp.postings"),
            by_customer: name("usage.rated-by-customer"),
            results: name("delivery.results"),
            by_name,
        };
        let mut specs: Vec<TopicSpec> = [
            &t.usage,
            &t.validated,
            &t.accounts,
            &t.subscriptions,
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
        // Drift reads the invoices, whether period-close runs or not.
        specs.push(stamps.spec(t.name("sales.invoices"), 3));
        for topic in [
            &t.rate_cards,
            &t.gl_mappings,
            t.name("master.legal-entities"),
        ] {
            specs.push(TopicSpec::new(topic, 1));
        }
        // The order orchestrator's inputs, co-partitioned: orders, its steps' results, decisions.
        for topic in [
            "sales.orders",
            "sales.order-step-results",
            "sales.order-approvals",
        ] {
            specs.push(stamps.spec(t.name(topic), 3));
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

fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.push((key.to_owned(), value));
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
    /// Sandbox URL (every system).
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
    /// Settings of one stage that differ from its local ones: binary, key, value.
    pub settings: Vec<(&'static str, String, String)>,
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
        for binary in stages()
            .into_iter()
            .chain(["monitor", "drift", "ingest", PASS_THROUGH])
        {
            ports.insert(binary, free_port());
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
            settings: Vec::new(),
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

    /// The ingest gateway's keys file (`backbone_ingest::keys::create` makes keys in it).
    pub fn ingest_keys_file(&self) -> PathBuf {
        self.dir.join("ingest-keys.jsonl")
    }

    /// The metrics address of `binary`.
    pub fn metrics_address(&self, binary: &str) -> String {
        format!("127.0.0.1:{}", self.ports[binary])
    }

    /// The drift reconciler's configuration for this deployment's topics and sandbox, to run it
    /// in the test's own process.
    pub fn drift_config(&self) -> backbone_drift::DriftConfig {
        let t = &self.topics;
        backbone_drift::DriftConfig {
            kafka: self.kafka.clone(),
            schema_registry: backbone_core::schema_registry::SchemaRegistrySettings::at(
                self.registry_url.clone(),
            ),
            drift: backbone_drift::DriftSettings {
                enriched_topic: t.enriched.clone(),
                enriched_dlq_topic: format!("{}.dlq", t.enriched),
                rated_topic: t.rated.clone(),
                accounts_topic: t.accounts.clone(),
                gl_mappings_topic: t.gl_mappings.clone(),
                legal_entities_topic: t.name("master.legal-entities").to_owned(),
                invoices_topic: t.name("sales.invoices").to_owned(),
                billing_url: self.sandbox_url.clone(),
                crm_url: self.sandbox_url.clone(),
                erp_url: self.sandbox_url.clone(),
                ..backbone_drift::DriftSettings::default()
            },
        }
    }

    /// `month-end`'s environment for a run into `outbox` that takes a month as closed `grace`
    /// after its end.
    pub fn month_end_env(&self, grace: &str, outbox: &Path) -> Vec<(String, String)> {
        let mut env = self.env("month-end");
        set(&mut env, "BACKBONE__MONTH_END__GRACE", grace.to_owned());
        set(
            &mut env,
            "BACKBONE__MONTH_END__OUTBOX",
            outbox.to_string_lossy().into_owned(),
        );
        env
    }

    /// Runs `month-end --period <period>` into `outbox` with `grace` to its end: its exit
    /// status and what it printed.
    pub fn run_month_end(&self, period: &str, grace: &str, outbox: &Path) -> (Option<i32>, String) {
        let output = std::process::Command::new(workspace_binary("month-end"))
            .args(["--period", period])
            .envs(self.month_end_env(grace, outbox))
            .output()
            .expect("month-end runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), said)
    }

    /// Every binary's configuration, as environment overrides. A stage runs on its defaults,
    /// its component entry's topics (this deployment's names) and local settings, and the
    /// deployment's broker, registry, group, state and destination.
    pub fn env(&self, binary: &str) -> Vec<(String, String)> {
        let t = &self.topics;
        let mut env: Vec<(String, String)> = Vec::new();
        set(
            &mut env,
            "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
            self.kafka.bootstrap_servers.clone(),
        );
        // The monitor reads offsets only; everything else decodes contracts.
        if binary != "monitor" {
            set(
                &mut env,
                "BACKBONE__SCHEMA_REGISTRY__URL",
                self.registry_url.clone(),
            );
        }
        // A tool run once (month-end) listens nowhere.
        let listen = || self.metrics_address(binary);
        let state = self.dir.join("state").to_string_lossy().into_owned();
        let stage = backbone_components::named(binary).filter(|c| c.is_stage());
        if stage.is_some() || binary == PASS_THROUGH {
            set(
                &mut env,
                "BACKBONE__KAFKA__SESSION_TIMEOUT",
                "6s".to_owned(),
            );
            set(
                &mut env,
                "BACKBONE__KAFKA__COMMIT_INTERVAL",
                "200ms".to_owned(),
            );
            set(&mut env, "BACKBONE__RUNTIME__GROUP_ID", self.group(binary));
            set(&mut env, "BACKBONE__OBSERVABILITY__LISTEN", listen());
            set(
                &mut env,
                "BACKBONE__OBSERVABILITY__STATISTICS_INTERVAL",
                "1s".to_owned(),
            );
        }
        match stage.map(|c| c.kind) {
            Some(Kind::Sink) => {
                set(&mut env, "BACKBONE__RUNTIME__LEDGER_DIR", state.clone());
                set(&mut env, "BACKBONE__RUNTIME__LINGER", "50ms".to_owned());
            }
            Some(_) => {
                set(&mut env, "BACKBONE__RUNTIME__STATE__DIR", state.clone());
                if self.delivery == Delivery::ExactlyOnce {
                    set(
                        &mut env,
                        "BACKBONE__RUNTIME__DELIVERY",
                        "exactly-once".to_owned(),
                    );
                    // One instance per binary: its id is kept across restarts, so a restart
                    // fences what the killed run left open.
                    set(
                        &mut env,
                        "BACKBONE__RUNTIME__TRANSACTION__TRANSACTIONAL_ID",
                        format!("{}-0", self.group(binary)),
                    );
                }
            }
            None => {}
        }
        if let Some(stage) = stage {
            for (key, topic) in stage.topic_settings() {
                set(&mut env, &env_var(key), t.name(topic).to_owned());
            }
            for (key, value) in &stage.local {
                set(&mut env, &env_var(key), value.clone());
            }
            for (_, key, value) in self.settings.iter().filter(|(b, ..)| *b == binary) {
                set(&mut env, &env_var(key), value.clone());
            }
            if let (Some(key), false) = (&stage.dedup, self.downstream_dedup) {
                set(&mut env, &env_var(key), "false".to_owned());
            }
            match stage.destination {
                Some(Destination::Http) => {
                    set(
                        &mut env,
                        "BACKBONE__DESTINATION__URL",
                        self.sandbox_url.clone(),
                    );
                    set(
                        &mut env,
                        "BACKBONE__DESTINATION__CREDENTIAL",
                        "sandbox-token".to_owned(),
                    );
                }
                Some(Destination::Postgres) => {
                    let (url, password) =
                        backbone_sink::settings::split_password(&self.postgres_url);
                    set(&mut env, "BACKBONE__DESTINATION__URL", url);
                    set(
                        &mut env,
                        "BACKBONE__DESTINATION__CREDENTIAL",
                        password.map(|p| p.expose().to_owned()).unwrap_or_default(),
                    );
                    // A schema of its own per deployment.
                    set(
                        &mut env,
                        "BACKBONE__SINK__SCHEMA",
                        self.group_prefix.replace(['-', '.'], "_"),
                    );
                }
                None => {}
            }
            return env;
        }
        match binary {
            PASS_THROUGH => {
                set(&mut env, "BACKBONE__RUNTIME__STATE__DIR", state);
                set(
                    &mut env,
                    "BACKBONE__PROCESSOR__INPUT_TOPIC",
                    t.usage.clone(),
                );
                set(&mut env, "BACKBONE__PROCESSOR__OUTPUT_TOPIC", t.copy());
            }
            "monitor" => {
                let groups: Vec<String> = stages()
                    .into_iter()
                    .map(|b| format!("\"{}\"", self.group(b)))
                    .collect();
                set(
                    &mut env,
                    "BACKBONE__MONITOR__GROUPS",
                    format!("[{}]", groups.join(", ")),
                );
                set(&mut env, "BACKBONE__MONITOR__DISCOVER", "false".to_owned());
                set(&mut env, "BACKBONE__MONITOR__INTERVAL", "1s".to_owned());
                set(&mut env, "BACKBONE__MONITOR__LISTEN", listen());
            }
            "month-end" => {
                for (key, topic) in [
                    ("INVOICES_TOPIC", t.name("sales.invoices")),
                    ("LEGAL_ENTITIES_TOPIC", t.name("master.legal-entities")),
                    ("GL_MAPPINGS_TOPIC", t.gl_mappings.as_str()),
                    ("JOURNAL_BATCHES_TOPIC", t.name("erp.journal-batches")),
                ] {
                    set(
                        &mut env,
                        &format!("BACKBONE__MONTH_END__{key}"),
                        topic.to_owned(),
                    );
                }
                set(
                    &mut env,
                    "BACKBONE__MONTH_END__OUTBOX",
                    self.dir.join("outbox").to_string_lossy().into_owned(),
                );
            }
            "drift" => {
                set(
                    &mut env,
                    "BACKBONE__DRIFT__ENRICHED_TOPIC",
                    t.enriched.clone(),
                );
                set(
                    &mut env,
                    "BACKBONE__DRIFT__ENRICHED_DLQ_TOPIC",
                    format!("{}.dlq", t.enriched),
                );
                set(&mut env, "BACKBONE__DRIFT__RATED_TOPIC", t.rated.clone());
                set(
                    &mut env,
                    "BACKBONE__DRIFT__ACCOUNTS_TOPIC",
                    t.accounts.clone(),
                );
                set(
                    &mut env,
                    "BACKBONE__DRIFT__GL_MAPPINGS_TOPIC",
                    t.gl_mappings.clone(),
                );
                set(
                    &mut env,
                    "BACKBONE__DRIFT__LEGAL_ENTITIES_TOPIC",
                    t.name("master.legal-entities").to_owned(),
                );
                set(
                    &mut env,
                    "BACKBONE__DRIFT__INVOICES_TOPIC",
                    t.name("sales.invoices").to_owned(),
                );
                set(
                    &mut env,
                    "BACKBONE__DRIFT__BILLING_URL",
                    self.sandbox_url.clone(),
                );
                set(
                    &mut env,
                    "BACKBONE__DRIFT__CRM_URL",
                    self.sandbox_url.clone(),
                );
                set(
                    &mut env,
                    "BACKBONE__DRIFT__ERP_URL",
                    self.sandbox_url.clone(),
                );
                set(&mut env, "BACKBONE__DRIFT__INTERVAL", "1s".to_owned());
                set(&mut env, "BACKBONE__DRIFT__LISTEN", listen());
            }
            "ingest" => {
                set(&mut env, "BACKBONE__INGEST__LISTEN", listen());
                set(
                    &mut env,
                    "BACKBONE__INGEST__KEYS_FILE",
                    self.ingest_keys_file().display().to_string(),
                );
                set(
                    &mut env,
                    "BACKBONE__INGEST__TOPIC_NAMES",
                    format!("{{ \"usage.events\" = \"{}\" }}", t.usage),
                );
            }
            other => panic!("no configuration for `{other}`"),
        }
        env
    }

    /// Publishes `workload` into this deployment, as fast as the broker takes it: master data,
    /// then usage, encoded through the registry.
    pub async fn publish(&self, workload: &backbone_loadgen::Workload) {
        let codec = backbone_schemas::WireCodec::new(self.registry_url.as_str());
        let producer: rdkafka::producer::FutureProducer =
            self.kafka.producer_config().create().expect("producer");
        workload
            .publish(&producer, &codec, self.topics.destinations(), 0)
            .await
            .expect("publish the workload");
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
        for binary in stages() {
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
