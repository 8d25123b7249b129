//! The backbone's processes on one machine: the processors, the sandbox, the sinks, the lag
//! monitor and the drift reconciler, each a binary built next to this one, configured through
//! its environment. `demo up` starts them detached (their own process group, so they outlive
//! it) and leaves `<run dir>/<name>.pid` and `<name>.metrics` (port and Prometheus job) for
//! `stack.sh status` and `stack.sh down`; a demo run attaches to them when they all run, and
//! otherwise starts its own and stops them at the end.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backbone_core::schema_registry::RegistryArgs;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::back_office;

/// One process of the backbone.
pub struct Process {
    /// Binary name, also the name of its pid and log files.
    pub name: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Its own environment.
    pub env: Vec<(String, String)>,
    /// The port of its `/metrics` and `/ready` endpoint and its Prometheus job; for the
    /// sandbox, the port of its API, which has `/health` instead.
    pub port: u16,
    /// The job, `None` for the sandbox (nothing to scrape).
    pub job: Option<&'static str>,
}

/// Where the processes find the rest of the stack.
pub struct Stack<'a> {
    /// Broker.
    pub bootstrap_servers: &'a str,
    /// Registry and its credentials.
    pub registry: &'a RegistryArgs,
    /// The sandbox's address.
    pub sandbox_listen: &'a str,
    /// PostgreSQL for the analytics sink.
    pub postgres_url: &'a str,
    /// Partition state and ledgers.
    pub state_dir: &'a Path,
    /// The ERP sink's CSV outbox.
    pub outbox_dir: &'a Path,
}

/// Every process, in start order. `first_port` numbers the endpoints (`first_port`,
/// `first_port + 1`, ...); 0 lets each pick a free port.
pub fn processes(stack: &Stack<'_>, first_port: u16) -> Vec<Process> {
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    // A stage's endpoint is its `observability.listen`; the monitor and drift name theirs.
    let client = |port: Option<u16>| {
        let mut env = vec![pair(
            "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
            stack.bootstrap_servers,
        )];
        if let Some(port) = port {
            env.push(pair(
                "BACKBONE__OBSERVABILITY__LISTEN",
                &format!("127.0.0.1:{port}"),
            ));
        }
        env.extend(stack.registry.env());
        env
    };
    let mut next = first_port;
    let mut port = || {
        let given = next;
        if next != 0 {
            next += 1;
        }
        given
    };
    let mut all = Vec::new();
    for processor in backbone_components::processors() {
        let port = port();
        let mut env = client(Some(port));
        env.push(pair(
            "BACKBONE__RUNTIME__STATE__DIR",
            &stack.state_dir.to_string_lossy(),
        ));
        env.extend(back_office::local_settings(processor));
        all.push(Process {
            name: processor.name.clone(),
            args: Vec::new(),
            env,
            port,
            job: Some("backbone-processors"),
        });
    }
    for launch in back_office::launches(
        stack.sandbox_listen,
        stack.postgres_url,
        stack.state_dir,
        stack.outbox_dir,
    ) {
        if !launch.kafka_client {
            let port = stack
                .sandbox_listen
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            all.push(Process {
                name: launch.name,
                args: Vec::new(),
                env: launch.env,
                port,
                job: None,
            });
            continue;
        }
        let port = port();
        let mut env = client(Some(port));
        env.extend(launch.env);
        all.push(Process {
            name: launch.name,
            args: Vec::new(),
            env,
            port,
            job: Some("backbone-sinks"),
        });
    }
    let sandbox = format!("http://{}", stack.sandbox_listen);
    let port_of_monitor = port();
    // The monitor reads offsets only: no registry.
    let mut monitor = vec![pair(
        "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
        stack.bootstrap_servers,
    )];
    monitor.push(pair(
        "BACKBONE__MONITOR__LISTEN",
        &format!("127.0.0.1:{port_of_monitor}"),
    ));
    all.push(Process {
        name: "monitor".into(),
        args: Vec::new(),
        env: monitor,
        port: port_of_monitor,
        job: Some("backbone-monitor"),
    });
    let port_of_drift = port();
    let mut drift = client(None);
    for (key, value) in [
        (
            "BACKBONE__DRIFT__LISTEN",
            format!("127.0.0.1:{port_of_drift}"),
        ),
        ("BACKBONE__DRIFT__BILLING_URL", sandbox.clone()),
        ("BACKBONE__DRIFT__CRM_URL", sandbox.clone()),
        ("BACKBONE__DRIFT__ERP_URL", sandbox),
        ("BACKBONE__DRIFT__CREDENTIAL", back_office::TOKEN.to_owned()),
    ] {
        drift.push((key.to_owned(), value));
    }
    all.push(Process {
        name: "drift".into(),
        args: vec!["serve".into()],
        env: drift,
        port: port_of_drift,
        job: Some("backbone-drift"),
    });
    all
}

/// A binary built next to this one.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the demo binary")?;
    let binary = exe.with_file_name(name);
    if !binary.exists() {
        bail!(
            "binary {} not found; build it with `cargo build --bins`",
            binary.display()
        );
    }
    Ok(binary)
}

fn command(process: &Process, log_dir: &Path) -> Result<Command> {
    let binary = sibling(&process.name)?;
    let log = log_dir.join(format!("{}.log", process.name));
    // Appended to: a process started again keeps the log of the run that ended.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(&binary);
    command
        .args(&process.args)
        .envs(process.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    Ok(command)
}

/// A process this run started and stops.
pub struct Stage {
    name: String,
    child: Child,
}

impl Drop for Stage {
    /// A demo that fails half-way takes its processes with it: left running, they would hold
    /// their state and group membership against the next run.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Stage {
    /// Starts `process`, its output in `<log dir>/<name>.log`.
    pub fn start(process: &Process, log_dir: &Path) -> Result<Stage> {
        let child = command(process, log_dir)?
            .spawn()
            .with_context(|| format!("starting {}", process.name))?;
        println!(
            "started {} (pid {}), log {}",
            process.name,
            child.id(),
            log_dir.join(format!("{}.log", process.name)).display()
        );
        Ok(Stage {
            name: process.name.clone(),
            child,
        })
    }

    /// SIGTERM, then its exit, which must be clean.
    pub fn stop(&mut self) -> Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).with_context(|| format!("stopping {}", self.name))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for {}", self.name))?;
        if !status.success() {
            bail!("{} exited with {status}; see its log", self.name);
        }
        Ok(())
    }
}

/// The pid in `<run dir>/<name>.pid` when that process still runs.
pub fn running(run_dir: &Path, name: &str) -> Option<i32> {
    let text = std::fs::read_to_string(run_dir.join(format!("{name}.pid"))).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A process that exited and was not reaped yet is a zombie: not running.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

/// Starts each of `processes` not already running, detached, and writes its pid and metrics
/// files.
pub fn start_detached(processes: &[Process], run_dir: &Path, log_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    for process in processes {
        if let Some(pid) = running(run_dir, &process.name) {
            println!("{} already runs (pid {pid})", process.name);
            continue;
        }
        // Its own process group: Ctrl-C in the terminal that ran `make up` does not reach it.
        let child = command(process, log_dir)?
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", process.name))?;
        let write = |suffix: &str, text: String| {
            let path = run_dir.join(format!("{}.{suffix}", process.name));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("pid", format!("{}\n", child.id()))?;
        if let Some(job) = process.job {
            write("metrics", format!("{} {job}\n", process.port))?;
        }
        println!(
            "started {} (pid {}), log {}",
            process.name,
            child.id(),
            log_dir.join(format!("{}.log", process.name)).display()
        );
    }
    Ok(())
}

/// Waits until every process answers its readiness check (`/ready`, the sandbox `/health`),
/// or fails naming those that did not within `timeout`.
pub async fn await_ready(processes: &[Process], timeout: Duration) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .context("an HTTP client")?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut waiting = Vec::new();
        for process in processes {
            let path = if process.job.is_some() {
                "ready"
            } else {
                "health"
            };
            let url = format!("http://127.0.0.1:{}/{path}", process.port);
            let ready = http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ready {
                waiting.push(process.name.as_str());
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "not ready within {}s: {} (see their logs)",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
