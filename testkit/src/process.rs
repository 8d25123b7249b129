//! Child processes (brokers, processor binaries) that never outlive the test.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::TestkitError;

/// A running child process, killed when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    program: String,
    child: Child,
}

impl ChildProcess {
    /// Starts `program` with `args` and extra `env`; output goes to `log` when given.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Self, TestkitError> {
        let name = program.display().to_string();
        let fail = |message: String| TestkitError::Process {
            program: name.clone(),
            message,
        };
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        match log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .map_err(|e| fail(format!("log file {}: {e}", path.display())))?;
                let err = file
                    .try_clone()
                    .map_err(|e| fail(format!("log file {}: {e}", path.display())))?;
                command.stdout(file).stderr(err);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command.spawn().map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            program: name,
            child,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: a crash, with no chance to commit or clean up.
    pub fn crash(&mut self) -> Result<ExitStatus, TestkitError> {
        self.signal(Signal::SIGKILL)?;
        self.child.wait().map_err(|e| self.fail(e.to_string()))
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, TestkitError> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| self.fail(e.to_string()))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::Timeout {
                    what: format!("`{}` to exit after SIGTERM", self.program),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, signal: Signal) -> Result<(), TestkitError> {
        let pid = i32::try_from(self.child.id()).map_err(|e| self.fail(e.to_string()))?;
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(err) => Err(self.fail(err.to_string())),
        }
    }

    fn fail(&self, message: String) -> TestkitError {
        TestkitError::Process {
            program: self.program.clone(),
            message,
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a tool that `make setup` installs (`openssl`, the Python client) to the end; its error
/// output is the error when it fails.
pub(crate) fn run_tool(command: &mut Command, what: &str) -> Result<(), TestkitError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let failed = |message: String| TestkitError::Process {
        program: program.clone(),
        message,
    };
    let output = command
        .output()
        .map_err(|e| failed(format!("{e} (run `make setup` to install it)")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}
