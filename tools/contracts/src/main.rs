//! `contracts`: lint, check, register and apply Backbone's event contracts.
//!
//! Parses arguments and calls [`backbone_contracts`]; all logic lives there.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use backbone_contracts::{self as cli, CliError, Inputs, RegistryClient, Report};
use backbone_core::schema_registry::RegistryArgs;
use clap::{Args, Parser, Subcommand};

/// Lint, check, register and apply Backbone's event contracts.
///
/// The contracts are the Avro files under schemas/contracts (one record per file) and
/// schemas/manifest.toml, which maps every topic to its contract, registry subject,
/// compatibility mode, partitions and cleanup policy. Run from the repository root.
///
/// Exit codes: 0 nothing wrong, 1 violations found (each line names the schema file, the
/// field and the rule), 2 usage error or a registry, broker or git that could not be asked.
#[derive(Debug, Parser)]
#[command(name = "contracts", version, after_help = EXAMPLES)]
struct Cli {
    /// Directory of .avsc files [default: schemas/contracts, or the contracts built into this
    /// binary when that directory does not exist]
    #[arg(long, global = true, value_name = "DIR")]
    contracts_dir: Option<PathBuf>,

    /// The topic manifest [default: schemas/manifest.toml, or the manifest built into this
    /// binary when that file does not exist]
    #[arg(long, global = true, value_name = "FILE")]
    manifest: Option<PathBuf>,

    /// Print one JSON document ({"ok", "violations": [{"schema", "field", "rule",
    /// "message"}], ...}) instead of lines for people
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  contracts lint                          every rule over every contract and the manifest
  contracts check --against origin/main   is this branch's evolution allowed? (no registry needed)
  contracts check                         the same against the registry's versions
  contracts register                      register every topic's schema, idempotently
  contracts apply --dry-run               which topics would be created
  contracts --json lint | jq .violations";

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every contract file and the manifest against the contract rules
    ///
    /// Each violation names the file, the field and the rule id:
    ///   doc-required          every record has a doc, every field a non-empty doc
    ///   type-name             record and enum names are PascalCase
    ///   field-name            field names are snake_case
    ///   enum-symbol           enum symbols are UPPER_SNAKE_CASE
    ///   namespace             namespaces start with `backbone.`
    ///   no-float              no float or double anywhere: money and quantities are decimals
    ///   decimal-bytes         decimals are encoded on bytes, not fixed
    ///   timestamp-micros      times are timestamp-micros; a long field named *_at must be one
    ///   enum-default          every enum has a default that is one of its symbols
    ///   optional-field        optional fields are ["null", ...] unions with "default": null
    ///   one-record-per-file   each file defines one named record (enums may be inline)
    ///   unresolved-reference  every named type used is defined by some contract file
    ///   json, duplicate-name  files parse, and no two define the same name
    ///   manifest              the manifest parses and its entries are valid
    ///   bundle                every topic's contract bundles into valid Avro
    #[command(verbatim_doc_comment)]
    Lint,

    /// Check each topic's contract against what is deployed, under its compatibility mode
    ///
    /// With --against REF, the contract of each manifest topic is compared with the same
    /// topic's contract at that git ref, under the manifest's mode (CI can run this without a
    /// registry). Otherwise every version of the topic's subject in the registry is compared,
    /// under the subject's mode there. Subjects with nothing deployed are reported as new.
    /// Incompatible changes are violations of rule compatibility.
    Check(CheckArgs),

    /// Register each topic's bundled contract under its value subject
    ///
    /// Sets the subject's compatibility to the manifest's mode first, then registers; a schema
    /// the subject holds already keeps its id, so running it twice prints the same ids. A
    /// schema the registry refuses as incompatible is a violation of rule compatibility.
    Register(RegisterArgs),

    /// Create the manifest's topics and their dead-letter topics that the broker lacks
    ///
    /// Prints the diff first, then creates what is missing (idempotent: a second run has
    /// nothing to do). Partition counts that differ are reported and left alone: our brokers
    /// cannot add partitions. Configs of existing topics are not compared.
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Compare with the contracts at this git ref (branch, tag or commit) instead of the
    /// registry; --registry-url is then ignored
    #[arg(long, value_name = "REF")]
    against: Option<String>,

    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// Kafka bootstrap servers, host:port[,host:port...]
    #[arg(
        long,
        env = "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        value_name = "SERVERS"
    )]
    bootstrap_servers: String,

    /// Print what would be created and change nothing
    #[arg(long)]
    dry_run: bool,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Lint => "lint",
            Command::Check(_) => "check",
            Command::Register(_) => "register",
            Command::Apply(_) => "apply",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(report) => {
            if cli.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_human());
            }
            ExitCode::from(report.exit_code())
        }
        Err(error) => {
            if cli.json {
                println!("{}", cli::error_json(cli.command.name(), &error));
            }
            eprintln!("contracts {}: error: {error}", cli.command.name());
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> Result<Report, CliError> {
    let inputs = Inputs::load(cli.contracts_dir.as_deref(), cli.manifest.as_deref())?;
    for note in inputs.notes() {
        eprintln!("contracts: {note}");
    }
    match &cli.command {
        Command::Lint => Ok(cli::lint(&inputs)),
        Command::Check(args) => match &args.against {
            Some(reference) => cli::check_against_git(&inputs, reference),
            None => {
                let client = RegistryClient::new(&args.registry)?;
                cli::check_against_registry(&inputs, &client).await
            }
        },
        Command::Register(args) => {
            let client = RegistryClient::new(&args.registry)?;
            cli::register(&inputs, &client).await
        }
        Command::Apply(args) => {
            let settings = backbone_core::connect::tool_cluster(&args.bootstrap_servers).await?;
            let json = cli.json;
            cli::apply(&inputs, &settings, args.dry_run, |plan| {
                // The diff goes out before anything changes.
                if !json {
                    let mut out = std::io::stdout().lock();
                    for line in plan.lines() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            })
            .await
        }
    }
}
