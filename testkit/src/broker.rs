//! A throwaway transaction-capable broker for exactly-once tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backbone_core::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::process::ChildProcess;
use crate::TestkitError;

/// Environment variable pointing at the transaction-capable broker binary.
pub const TXN_BROKER_ENV: &str = "BACKBONE_TXN_BROKER";

/// A private in-memory broker that supports Kafka transactions, on a free 127.0.0.1 port,
/// stopped when dropped. Its high watermarks are unreliable (see DESIGN.md): do not test lag
/// or read-to-end logic on it.
#[derive(Debug)]
pub struct TxnBroker {
    process: ChildProcess,
    bootstrap: String,
}

impl TxnBroker {
    /// Starts the broker and waits until it answers a metadata request.
    pub fn start() -> Result<Self, TestkitError> {
        let binary = std::env::var_os(TXN_BROKER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(default_binary);
        let port = free_port()?;
        let bootstrap = format!("127.0.0.1:{port}");
        let listen = format!("tcp://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("backbone-txn-broker-{port}.log"));
        let process = ChildProcess::spawn(
            &binary,
            &[
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &listen,
                "--storage-engine",
                "memory://tansu/",
            ],
            // At its default level the broker logs every request: gigabytes per test run.
            &[("RUST_LOG", "warn")],
            Some(&log),
        )?;
        let broker = Self { process, bootstrap };
        broker.await_ready(Duration::from_secs(30))?;
        Ok(broker)
    }

    /// `host:port` to bootstrap from.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Client settings for this broker, with a short session timeout.
    pub fn settings(&self) -> KafkaSettings {
        let mut settings = KafkaSettings::for_servers(&self.bootstrap);
        settings.session_timeout = Duration::from_secs(6);
        settings.commit_interval = Duration::from_millis(200);
        settings
    }

    fn await_ready(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        let consumer: BaseConsumer = self.settings().admin_config().create()?;
        loop {
            match consumer.fetch_metadata(None, Duration::from_millis(500)) {
                Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(TestkitError::Timeout {
                        what: format!("transaction broker at {} to answer", self.bootstrap),
                        waited: timeout,
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Process id of the broker.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

fn default_binary() -> PathBuf {
    let tools = std::env::var_os("BACKBONE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/backbone")
        });
    tools.join("bin/tansu-txn")
}

fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| TestkitError::Process {
        program: "port probe".into(),
        message: e.to_string(),
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| TestkitError::Process {
            program: "port probe".into(),
            message: e.to_string(),
        })
}
