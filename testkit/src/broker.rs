//! Throwaway Apache Kafka nodes, for tests that kill and restart a broker or need a cluster.
//!
//! Each node is `scripts/kafka/broker` (the launcher the embedded stack uses) with its data in a
//! directory of its own, deleted when the node is dropped. Tests that only need a broker use
//! the shared one ([`crate::shared_settings`]): a node costs a JVM and seconds to start.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backbone_core::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::process::{run_tool, ChildProcess};
use crate::TestkitError;

/// How long a node may take to answer: a JVM start, and after a crash a recovery of its logs.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// One KRaft node (broker and controller in one process) on 127.0.0.1.
#[derive(Debug)]
pub struct KafkaBroker {
    node_id: u32,
    port: u16,
    controller_port: u16,
    voters: String,
    cluster_id: String,
    /// Broker settings over the launcher's single-node defaults.
    overrides: Vec<String>,
    /// SCRAM users, in the launcher's `--scram` form.
    scram: Vec<String>,
    dir: PathBuf,
    process: Option<ChildProcess>,
}

impl KafkaBroker {
    /// Starts a single-node cluster and waits until it answers.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(&[])
    }

    /// A node that checks every request against ACLs (Kafka's `StandardAuthorizer`) and allows
    /// what no ACL names: a test denies what it needs refused with [`KafkaBroker::deny_reads`].
    pub fn start_authorizing() -> Result<Self, TestkitError> {
        Self::start_with(&[
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=true",
        ])
    }

    /// [`KafkaBroker::start`] with broker settings (`key=value`) over the launcher's defaults.
    pub fn start_with(settings: &[&str]) -> Result<Self, TestkitError> {
        let (port, controller_port) = (free_port()?, free_port()?);
        Self::start_node(
            port,
            controller_port,
            settings.iter().map(|s| (*s).to_owned()).collect(),
            Vec::new(),
        )
    }

    /// A single node on the given ports, with `scram` users (the launcher's `--scram`) stored
    /// when its directory is formatted.
    pub(crate) fn start_node(
        port: u16,
        controller_port: u16,
        overrides: Vec<String>,
        scram: Vec<String>,
    ) -> Result<Self, TestkitError> {
        let mut broker = Self::new(
            1,
            port,
            controller_port,
            format!("1@127.0.0.1:{controller_port}"),
            cluster_id(),
            overrides,
        );
        broker.scram = scram;
        broker.launch()?;
        broker.await_ready(1)?;
        Ok(broker)
    }

    fn new(
        node_id: u32,
        port: u16,
        controller_port: u16,
        voters: String,
        id: String,
        overrides: Vec<String>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("backbone-kafka-{id}-{node_id}"));
        Self {
            node_id,
            port,
            controller_port,
            voters,
            cluster_id: id,
            overrides,
            scram: Vec::new(),
            dir,
            process: None,
        }
    }

    /// `host:port` of this node.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Client settings for this node, with a short session timeout.
    pub fn settings(&self) -> KafkaSettings {
        test_settings(&self.bootstrap())
    }

    /// This node's id in its cluster.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// Process id of the running node.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// The node's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// SIGKILL: the node stops with no chance to flush, close or hand over leadership.
    pub fn crash(&mut self) -> Result<(), TestkitError> {
        if let Some(mut process) = self.process.take() {
            process.crash()?;
        }
        Ok(())
    }

    /// Denies every client of this node's plaintext listener (the principal `User:ANONYMOUS`)
    /// reading `topic`, through Confluent's Python client (`make setup` installs it): the
    /// Rust client offers no ACL calls. Needs a node from [`KafkaBroker::start_authorizing`].
    pub fn deny_reads(&self, topic: &str) -> Result<(), TestkitError> {
        const DENY: &str = "import sys\n\
from confluent_kafka.admin import AdminClient, AclBinding, AclOperation, AclPermissionType, \
ResourcePatternType, ResourceType\n\
admin = AdminClient({'bootstrap.servers': sys.argv[1]})\n\
acl = AclBinding(ResourceType.TOPIC, sys.argv[2], ResourcePatternType.LITERAL, \
'User:ANONYMOUS', '*', AclOperation.READ, AclPermissionType.DENY)\n\
for done in admin.create_acls([acl]).values():\n    done.result(timeout=30)\n";
        run_python_client(DENY, &[&self.bootstrap(), topic])
    }

    /// Starts the node again on the data it had, and waits until it answers.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.crash()?;
        self.launch()?;
        self.await_ready(1)
    }

    /// Whether the node's process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    fn launch(&mut self) -> Result<(), TestkitError> {
        let script = repository().join("scripts/kafka/broker");
        let data = self.dir.join("data");
        let log = self.log();
        let (port, controller, node) = (
            self.port.to_string(),
            self.controller_port.to_string(),
            self.node_id.to_string(),
        );
        std::fs::create_dir_all(&self.dir).map_err(|e| TestkitError::Process {
            program: script.display().to_string(),
            message: format!("{}: {e}", self.dir.display()),
        })?;
        let (data, log) = (path_text(&data), path_text(&log));
        let mut args = vec![
            "--data",
            &data,
            "--port",
            &port,
            "--controller-port",
            &controller,
            "--log",
            &log,
            "--node-id",
            &node,
            "--voters",
            &self.voters,
            "--cluster-id",
            &self.cluster_id,
        ];
        for setting in &self.overrides {
            args.extend(["--set", setting.as_str()]);
        }
        for user in &self.scram {
            args.extend(["--scram", user.as_str()]);
        }
        let process = ChildProcess::spawn(
            &script,
            &args,
            // Several nodes and the tests' own processes share two cores and the memory.
            &[("BACKBONE_KAFKA_HEAP", "384m")],
            Some(&self.dir.join("launcher.log")),
        )?;
        self.process = Some(process);
        Ok(())
    }

    /// Waits until this node answers a metadata request that lists `brokers` brokers.
    fn await_ready(&mut self, brokers: usize) -> Result<(), TestkitError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let consumer: BaseConsumer = self.settings().admin_config().create()?;
        loop {
            if let Some(process) = self.process.as_mut() {
                if !process.is_running() {
                    return Err(self.failed("exited while starting"));
                }
            }
            match consumer.fetch_metadata(None, Duration::from_millis(500)) {
                Ok(metadata) if metadata.brokers().len() >= brokers => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(self.failed(&format!("did not answer within {START_TIMEOUT:?}")))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn failed(&self, what: &str) -> TestkitError {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        };
        TestkitError::Process {
            program: format!("kafka node {} on {}", self.node_id, self.bootstrap()),
            message: format!(
                "{what}; last lines of {}:\n{}\n{}",
                self.log().display(),
                tail(&self.dir.join("launcher.log")),
                tail(&self.log())
            ),
        }
    }
}

/// A test that passed leaves nothing behind; a failed one (the test is panicking) keeps the
/// node's data and log for the post-mortem, and says where.
impl Drop for KafkaBroker {
    fn drop(&mut self) {
        // Killed first: a node must not write into a directory being deleted.
        self.process.take();
        if std::thread::panicking() {
            // The node's own warnings, printed too: where the test ran (CI), the kept
            // directory goes with the machine.
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let warnings: Vec<&str> = log
                .lines()
                .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
                .collect();
            eprintln!(
                "kafka node {} kept for the post-mortem: {}; its last warnings:\n{}",
                self.node_id,
                self.dir.display(),
                warnings[warnings.len().saturating_sub(15)..].join("\n")
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Three KRaft nodes, each broker and controller, forming one cluster on 127.0.0.1.
#[derive(Debug)]
pub struct KafkaCluster {
    nodes: Vec<KafkaBroker>,
}

impl KafkaCluster {
    /// Starts `size` nodes and waits until metadata lists all of them.
    pub fn start(size: u32) -> Result<Self, TestkitError> {
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port()?, free_port()?));
        }
        let voters = ports
            .iter()
            .zip(1..)
            .map(|((_, controller), id)| format!("{id}@127.0.0.1:{controller}"))
            .collect::<Vec<_>>()
            .join(",");
        let id = cluster_id();
        // The internal topics (group offsets, transaction state) replicated like the backbone's
        // own, so that losing one node loses no coordinator.
        let replicas = size.min(3);
        let min_insync = replicas.saturating_sub(1).max(1);
        let overrides = vec![
            format!("offsets.topic.replication.factor={replicas}"),
            format!("transaction.state.log.replication.factor={replicas}"),
            format!("transaction.state.log.min.isr={min_insync}"),
            format!("share.coordinator.state.topic.replication.factor={replicas}"),
            format!("share.coordinator.state.topic.min.isr={min_insync}"),
        ];
        let mut nodes: Vec<KafkaBroker> = ports
            .into_iter()
            .zip(1..)
            .map(|((port, controller), node)| {
                KafkaBroker::new(
                    node,
                    port,
                    controller,
                    voters.clone(),
                    id.clone(),
                    overrides.clone(),
                )
            })
            .collect();
        // Started together: a controller quorum forms only once a majority runs.
        for node in &mut nodes {
            node.launch()?;
        }
        let brokers = nodes.len();
        for node in &mut nodes {
            node.await_ready(brokers)?;
        }
        Ok(Self { nodes })
    }

    /// Every node's address, as a client's bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaBroker::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client settings for the cluster, with a short session timeout; the topics a component
    /// creates get three replicas (at most the cluster's size), two of them in sync.
    pub fn settings(&self) -> KafkaSettings {
        let mut settings = test_settings(&self.bootstrap());
        let replicas = i32::try_from(self.nodes.len().min(3)).unwrap_or(3);
        settings.topics = backbone_core::Replication {
            replication_factor: replicas,
            min_insync_replicas: (replicas - 1).max(1),
        };
        settings
    }

    /// The node with `node_id`.
    pub fn node(&mut self, node_id: i32) -> Option<&mut KafkaBroker> {
        self.nodes
            .iter_mut()
            .find(|n| i64::from(n.node_id) == i64::from(node_id))
    }
}

fn test_settings(bootstrap: &str) -> KafkaSettings {
    let mut settings = KafkaSettings::for_servers(bootstrap);
    settings.session_timeout = Duration::from_secs(6);
    settings.commit_interval = Duration::from_millis(200);
    settings
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where `make setup` put the tools (`BACKBONE_TOOLS_DIR`, default `~/.cache/backbone`).
fn tools_dir() -> PathBuf {
    std::env::var_os("BACKBONE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/backbone")))
        .unwrap_or_default()
}

/// Runs `script` with Confluent's Python client (`make setup` installs it in its own
/// environment): a client of the broker that is not ours.
pub fn run_python_client(script: &str, args: &[&str]) -> Result<(), TestkitError> {
    run_tool(
        std::process::Command::new(tools_dir().join("bin/pyclient-python"))
            .arg("-c")
            .arg(script)
            .args(args),
        &args.join(" "),
    )
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// A generator of its own: tests seed the thread's generator for their workloads, and two runs
/// with one seed must still get different cluster ids and ports.
fn rng() -> fastrand::Rng {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // Truncation is fine: any 64 bits of the clock and the pid make a seed.
    #[allow(clippy::cast_possible_truncation)]
    fastrand::Rng::with_seed(nanos as u64 ^ u64::from(std::process::id()) << 32)
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding (22 characters; the
/// last carries 2 bits, so it is one of four).
fn cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rng();
    let mut id: String = (0..21)
        .map(|_| char::from(ALPHABET[rng.usize(..ALPHABET.len())]))
        .collect();
    id.push(char::from(b"AQgw"[rng.usize(..4)]));
    id
}

/// Ports handed out in this process: a node that is down still owns its port.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free port below Linux's ephemeral range (32768 and up): a restarted node listens on its
/// port again, and a port in that range may meanwhile be the local end of a client's
/// connection (a client reconnecting to the dead node can even be handed it).
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let mut rng = rng();
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1_000 {
        let port = rng.u16(20_000..32_000);
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
    Err(TestkitError::Process {
        program: "port probe".into(),
        message: "no free port in 20000..32000 after 1000 tries".into(),
    })
}
