//! The `contracts` commands as library functions: the binary parses arguments, loads the
//! [`Inputs`], calls one command, prints its [`Report`] and exits with [`Report::exit_code`].
//!
//! Exit codes: 0 when the command found nothing wrong, 1 when it found violations (each names
//! the schema, field and rule), 2 for usage errors and for anything that could not be asked
//! (git, the registry, the broker): those are [`CliError`]s.

pub mod apply;
pub mod check;
pub mod git;
pub mod registry;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use backbone_schemas::contracts::{ContractError, ContractSet};
use backbone_schemas::lint::{self, Rule, Violation};
use backbone_schemas::manifest::Manifest;

pub use apply::{apply, ApplySummary};
pub use check::{check_against_git, check_against_registry, CheckSummary};
pub use registry::{register, RegisterSummary, RegistryClient};

/// Where the contracts are looked for when `--contracts-dir` is not given.
pub const DEFAULT_CONTRACTS_DIR: &str = "schemas/contracts";
/// Where the manifest is looked for when `--manifest` is not given.
pub const DEFAULT_MANIFEST: &str = "schemas/manifest.toml";

/// Why a command could not run to the end (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An argument makes no sense.
    #[error("{0}")]
    Usage(String),
    /// A file or directory given could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A git command failed.
    #[error("git {command}: {message}")]
    Git {
        /// The git subcommand and its arguments.
        command: String,
        /// git's message.
        message: String,
    },
    /// The schema registry could not be asked or gave an unexpected answer.
    #[error("registry at {url}: {message}")]
    Registry {
        /// The registry URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A registry request failed; the error names the registry, the request and its answer.
    #[error(transparent)]
    RegistryRequest(#[from] backbone_schemas::RegistryError),
    /// The broker could not be asked or refused a request; the error names the servers or
    /// the topic.
    #[error(transparent)]
    Broker(#[from] backbone_core::admin::AdminError),
    /// The cluster could not be reached or refused us at start-up.
    #[error(transparent)]
    Cluster(#[from] backbone_core::connect::ConnectError),
}

/// The contract files and manifest text a command works on.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The contracts directory read, or `None` for the contracts built into the binary.
    pub contracts_dir: Option<PathBuf>,
    /// (path relative to the contracts directory, text) of every `.avsc` file, sorted by path.
    pub contract_texts: Vec<(String, String)>,
    /// The manifest file read, or `None` for the manifest built into the binary.
    pub manifest_path: Option<PathBuf>,
    /// The manifest's text.
    pub manifest_text: String,
}

impl Inputs {
    /// Reads the contracts directory and the manifest. A path given explicitly must exist;
    /// when `None`, the default path relative to the current directory is used if it exists,
    /// and the copy built into the binary otherwise.
    pub fn load(contracts_dir: Option<&Path>, manifest: Option<&Path>) -> Result<Self, CliError> {
        let contracts_dir = resolve(contracts_dir, DEFAULT_CONTRACTS_DIR)?;
        let contract_texts = match &contracts_dir {
            Some(dir) => read_contract_dir(dir)?,
            None => backbone_schemas::CONTRACT_FILES
                .iter()
                .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
                .collect(),
        };
        let manifest_path = resolve(manifest, DEFAULT_MANIFEST)?;
        let manifest_text = match &manifest_path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| CliError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            None => backbone_schemas::manifest::EMBEDDED_MANIFEST.to_owned(),
        };
        Ok(Self {
            contracts_dir,
            contract_texts,
            manifest_path,
            manifest_text,
        })
    }

    /// What was read, for the user: one line per input taken from the binary.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.contracts_dir.is_none() {
            notes.push(format!(
                "no {DEFAULT_CONTRACTS_DIR} here: using the {} contracts built into this binary",
                self.contract_texts.len()
            ));
        }
        if self.manifest_path.is_none() {
            notes.push(format!(
                "no {DEFAULT_MANIFEST} here: using the manifest built into this binary"
            ));
        }
        notes
    }

    /// How violations name the manifest.
    pub fn manifest_label(&self) -> String {
        match &self.manifest_path {
            Some(path) => path.display().to_string(),
            None => "manifest.toml (built in)".to_owned(),
        }
    }

    /// The contract set and the validated manifest; the violations when either is unusable.
    pub fn contracts_and_manifest(&self) -> Result<(ContractSet, Manifest), Vec<Violation>> {
        let set = ContractSet::from_texts(self.contract_texts.iter().cloned())
            .map_err(|e| vec![contract_violation(e)])?;
        let label = self.manifest_label();
        let manifest = Manifest::parse(&self.manifest_text)
            .map_err(|e| vec![lint::manifest_violation(&label, e)])?;
        manifest
            .validate(&set)
            .map_err(|e| vec![lint::manifest_violation(&label, e)])?;
        Ok((set, manifest))
    }
}

fn resolve(given: Option<&Path>, default: &str) -> Result<Option<PathBuf>, CliError> {
    match given {
        Some(path) if path.exists() => Ok(Some(path.to_owned())),
        Some(path) => Err(CliError::Read {
            path: path.display().to_string(),
            message: "no such file or directory".to_owned(),
        }),
        None => {
            let path = PathBuf::from(default);
            Ok(path.exists().then_some(path))
        }
    }
}

/// Every `.avsc` file under `dir`, as (path relative to `dir` with `/` separators, text).
pub fn read_contract_dir(dir: &Path) -> Result<Vec<(String, String)>, CliError> {
    backbone_schemas::contracts::read_texts(dir).map_err(|e| match e {
        ContractError::Read { path, message } => CliError::Read { path, message },
        other => CliError::Read {
            path: dir.display().to_string(),
            message: other.to_string(),
        },
    })
}

/// A contract set that does not load, as a violation of the file concerned.
pub fn contract_violation(error: ContractError) -> Violation {
    match &error {
        ContractError::Read { path, .. } | ContractError::Invalid { path, .. } => {
            Violation::new(path, Rule::Json, error.to_string())
        }
        ContractError::Avro { path, .. } => Violation::new(path, Rule::Bundle, error.to_string()),
        ContractError::Duplicate { second, name, .. } => {
            Violation::new(second, Rule::DuplicateName, error.to_string()).in_record(name)
        }
        ContractError::Unknown { name } => {
            Violation::new("contracts", Rule::UnresolvedReference, error.to_string())
                .in_record(name)
        }
    }
}

/// What `lint` looked at.
#[derive(Debug, Clone, Serialize)]
pub struct LintSummary {
    /// Contract files linted.
    pub files: usize,
    /// Manifest topics checked.
    pub topics: usize,
}

/// Runs every lint rule over the contracts and the manifest.
pub fn lint(inputs: &Inputs) -> Report {
    let (mut violations, set) = lint::lint_contracts(&inputs.contract_texts);
    violations.extend(lint::lint_manifest(
        &inputs.manifest_label(),
        &inputs.manifest_text,
        &set,
    ));
    let topics = Manifest::parse(&inputs.manifest_text)
        .map(|m| m.topic.len())
        .unwrap_or(0);
    Report::new(
        violations,
        Detail::Lint(LintSummary {
            files: inputs.contract_texts.len(),
            topics,
        }),
    )
}

/// The outcome of one command, printed for people or as one JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No violations.
    pub ok: bool,
    /// The command that ran.
    pub command: &'static str,
    /// Everything found wrong.
    pub violations: Vec<Violation>,
    /// What the command did or found, per command.
    #[serde(flatten)]
    pub detail: Detail,
}

/// The command-specific part of a [`Report`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Detail {
    /// `lint`.
    Lint(LintSummary),
    /// `check`.
    Check(CheckSummary),
    /// `register`.
    Register(RegisterSummary),
    /// `apply`.
    Apply(ApplySummary),
}

impl Report {
    /// A report of `violations` and `detail`.
    pub fn new(violations: Vec<Violation>, detail: Detail) -> Self {
        let command = match &detail {
            Detail::Lint(_) => "lint",
            Detail::Check(_) => "check",
            Detail::Register(_) => "register",
            Detail::Apply(_) => "apply",
        };
        Self {
            ok: violations.is_empty(),
            command,
            violations,
            detail,
        }
    }

    /// 0 without violations, 1 with.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.ok)
    }

    /// The report as one JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            serde_json::json!({"ok": false, "error": format!("report: {e}")}).to_string()
        })
    }

    /// The report for people: what was done, the violations, and a summary line. `apply`'s
    /// diff is not repeated here: [`apply()`] hands it out before changing anything.
    pub fn to_human(&self) -> String {
        let mut out = String::new();
        let lines = match &self.detail {
            Detail::Lint(_) | Detail::Apply(_) => Vec::new(),
            Detail::Check(summary) => summary.lines(),
            Detail::Register(summary) => summary.lines(),
        };
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        for violation in &self.violations {
            let _ = writeln!(out, "{violation}");
        }
        let summary = match &self.detail {
            Detail::Lint(s) => format!(
                "{}, {}",
                count(s.files, "contract file"),
                count(s.topics, "topic")
            ),
            Detail::Check(s) => format!(
                "{} against {}",
                count(s.subjects.len(), "subject"),
                s.against
            ),
            Detail::Register(s) => {
                format!("{} at {}", count(s.subjects.len(), "subject"), s.registry)
            }
            Detail::Apply(s) => s.summary(),
        };
        let verdict = match self.violations.len() {
            0 => "ok".to_owned(),
            n => count(n, "violation"),
        };
        let _ = writeln!(out, "{}: {summary}: {verdict}", self.command);
        out
    }
}

/// "1 topic", "2 topics".
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// An error as the one JSON document `--json` promises.
pub fn error_json(command: &str, error: &CliError) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "ok": false,
        "command": command,
        "error": error.to_string(),
        "violations": [],
    }))
    .unwrap_or_default()
}
