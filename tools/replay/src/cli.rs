//! The command line: clap definitions, with examples in every `--help`, and [`execute`], which
//! runs a parsed command and prints its result.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backbone_core::config::{load_from, ConfigError, Validate};
use backbone_core::connect::check_connection;
use backbone_core::schema_registry::SchemaRegistrySettings;
use backbone_core::KafkaSettings;
use clap::{ArgGroup, Args, Parser, Subcommand};
use serde::Deserialize;

use crate::error::ReplayError;
use crate::filter::{Filter, FilterArgs, OffsetRange};
use crate::offsets::{self, ResetTarget};
use crate::progress::ProgressMode;
use crate::republish::{self, RunOptions};
use crate::time::{parse_instant, INSTANT_FORMS};
use crate::trace::{self, TopicNames, TraceRequest, Traced, Window, TRACED_TOPICS};
use crate::{audit, dlq, tenant, Context, AUDIT_TOPIC, CHECKPOINT_TOPIC};

const EXAMPLES: &str = "\
Examples:
  # What failed, grouped by error class and reason
  replay dlq list billing.charges.dlq

  # Look at three of them, decoded through the schema registry
  replay dlq show billing.charges.dlq --limit 3

  # Check what a replay would do, and which records would fail again
  replay run billing.charges.dlq --reason destination_rejected --dry-run

  # Send them back to the topic each failed on, 50 records per second
  replay run billing.charges.dlq --reason destination_rejected --rate 50 --operator ann

  # Resume an interrupted replay: nothing is sent twice
  replay run --replay-id r-20261127T031500Z-3f9a

  # Make the billing sink read again from 03:00 UTC: preview, then apply
  replay reset-offsets --group billing-sink --topic billing.charges --to-time 2026-11-27T03:00:00Z
  replay reset-offsets --group billing-sink --topic billing.charges --to-time 2026-11-27T03:00:00Z --execute

  # Who replayed or reset what
  replay audit

Every command reads Kafka at --bootstrap-servers and, where it decodes records, the registry at
--registry-url. Replays and executed resets are recorded on the audit topic.
See docs/replay.md for the guarantees.";

const RUN_EXAMPLES: &str = "\
Examples:
  # Every dead letter back to its origin topic (backbone.origin.topic)
  replay run usage.events.dlq

  # Dry run: print each record, say which would fail again (unknown schema id, undecodable...)
  replay run usage.events.dlq --dry-run

  # Only what failed between 03:00 and 04:00 UTC for one reason
  replay run usage.events.dlq --since 2026-11-27T03:00:00Z --until 2026-11-27T04:00:00Z --reason unknown_schema_id

  # What failed in the last two hours, slowly
  replay run usage.events.dlq --since 2h --rate 20

  # Offsets 100 to 199 of partition 2 of any topic, to another topic
  replay run usage.events --partition 2 --offsets 100..199 --to usage.events.retry

  # One customer's records, carrying a given header
  replay run billing.charges.dlq --key acme:s-17 --header tenant=acme

Times: a record's time is its backbone.dlq.failed_at header when it has one, otherwise its
Kafka timestamp; --since is inclusive, --until exclusive. Offsets: A..B includes both ends.
An interrupted replay (Ctrl-C, a crash, a lost connection) resumes with --replay-id: records
it sent before are found and skipped.";

const RESET_EXAMPLES: &str = "\
Examples:
  # Preview: old and new offset of every partition, nothing changes
  replay reset-offsets --group usage-rater --topic usage.enriched --to-time 2026-11-27T03:00:00Z

  # Apply it (the group must have no active members: stop its consumers first)
  replay reset-offsets --group usage-rater --topic usage.enriched --to-time 2026-11-27T03:00:00Z --execute

  # Skip everything written so far
  replay reset-offsets --group crm-sink --topic crm.account-health --to-latest --execute";

/// `replay`: see what failed, bring it back, and move consumer groups, with an audit trail.
#[derive(Debug, Parser)]
#[command(
    name = "replay",
    version,
    about = "Inspect dead-letter topics, republish records, move consumer groups; every change audited",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Kafka bootstrap servers (host:port, comma-separated) [env:
    /// BACKBONE__KAFKA__BOOTSTRAP_SERVERS] [default: 127.0.0.1:9092].
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub bootstrap_servers: Option<String>,
    /// Schema registry base URL [env: BACKBONE__SCHEMA_REGISTRY__URL] [default:
    /// http://127.0.0.1:8081].
    #[arg(long, global = true, value_name = "URL")]
    pub registry_url: Option<String>,
    /// A processor's TOML config file: its `[kafka]` section (with TLS, SASL and other
    /// `[kafka.properties]`) and `[schema_registry]` are used, other sections ignored.
    /// BACKBONE__KAFKA__* and BACKBONE__SCHEMA_REGISTRY__* variables override it, and the flags
    /// above override both.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// How long to wait for the broker or the registry before giving up (e.g. 5s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Topic holding replay checkpoints.
    #[arg(long, global = true, default_value = CHECKPOINT_TOPIC)]
    pub checkpoint_topic: String,
    /// Topic holding audit records.
    #[arg(long, global = true, default_value = AUDIT_TOPIC)]
    pub audit_topic: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read dead-letter topics.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Republish records: from a DLQ to where each failed, or from any topic with --to.
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),
    /// Move a consumer group's offsets on a topic (preview unless --execute).
    #[command(after_help = RESET_EXAMPLES)]
    ResetOffsets(ResetArgs),
    /// List replays and resets from the audit topic.
    Audit(AuditArgs),
    /// Where did an event go? Follows one usage event (or rated line) through every stage
    /// and sink, from topic data alone.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Pause a tenant at a stage (its records are held there, in order), resume it, list
    /// the pauses in force.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The orders waiting for approval; approve or reject one.
    #[command(subcommand)]
    Orders(crate::orders::OrdersCommand),
}

const TENANT_EXAMPLES: &str = "\
Examples:
  # Hold tenant acme's records at the billing sink while its billing account is fixed
  replay tenant pause --tenant acme --stage billing-sink --reason 'INC-4211 billing account locked'

  # Hold them before rating, and at every sink
  replay tenant pause --tenant acme --stage usage-rater --reason 'rate card under review'

  # What is paused, and where
  replay tenant list

  # Let them go: the held records go on first, in the order they arrived
  replay tenant resume --tenant acme --stage billing-sink

A stage is named by its consumer group: its name in components.toml (usage-validator, enricher,
usage-rater, fanout, billing-sink, crm-sink, analytics-sink, erp-sink) unless it was deployed
under another group. Other tenants flow on. Held records show as
backbone_tenant_held_records and backbone_tenant_held_oldest_age_seconds.";

/// `replay tenant ...`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Hold a tenant's records at one or more stages.
    #[command(after_help = TENANT_EXAMPLES)]
    Pause(PauseArgs),
    /// Let a paused tenant's records go on, the held ones first.
    #[command(after_help = TENANT_EXAMPLES)]
    Resume(ResumeArgs),
    /// The pauses in force.
    #[command(after_help = TENANT_EXAMPLES)]
    List(ControlsArgs),
}

/// The control topic, for every `replay tenant` command.
#[derive(Debug, Args)]
pub struct ControlsArgs {
    /// The control topic the stages follow (their `runtime.tenant_controls`).
    #[arg(long, value_name = "TOPIC", default_value = backbone_core::tenant::DEFAULT_CONTROLS_TOPIC)]
    pub controls_topic: String,
    /// JSON instead of a table (list) or a sentence (pause, resume).
    #[arg(long)]
    pub json: bool,
}

/// `replay tenant resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The stage's consumer group (repeat for several).
    #[arg(long = "stage", value_name = "GROUP", required = true)]
    pub stages: Vec<String>,
    /// Who, for the audit.
    #[arg(long, env = "USER", default_value = "unknown")]
    pub operator: String,
    /// The control topic.
    #[command(flatten)]
    pub controls: ControlsArgs,
}

/// `replay tenant pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The tenant, its stages and who asks.
    #[command(flatten)]
    pub change: ResumeArgs,
    /// Why, for the next operator (shown by `replay tenant list`).
    #[arg(long)]
    pub reason: String,
}

const TRACE_EXAMPLES: &str = "\
Examples:
  # One usage event of tenant acme, published in the last 24 hours
  replay trace --tenant acme --event-id e-20261205-0042

  # Published last week by the api-gateway producer; as JSON for tools
  replay trace --tenant acme --event-id e-17 --source api-gateway --since 2026-11-28 --until 2026-11-29 --json

  # A charge the billing system shows (a charge id is the rated line's id)
  replay trace --tenant acme --charge-id r-5f0c2a91

The event is looked for between --since and --until on usage.events (and its DLQ); what it
caused is looked for from then until --within later. Every step names its record (topic,
partition, offset), its time and its schema id and version. Exit status 3: never seen.";

/// `replay trace`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("traced").required(true).args(["event_id", "rating_id"])))]
pub struct TraceArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The usage event's id (`metadata.event_id`).
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// Its producer (`metadata.source`), needed when several producers use the id.
    #[arg(long, value_name = "SOURCE", requires = "event_id")]
    pub source: Option<String>,
    /// A rated line's id, which its charge, posting and fact carry as well.
    #[arg(long, alias = "charge-id", value_name = "ID")]
    pub rating_id: Option<String>,
    /// Look for it from this time: RFC 3339, a date, or a duration ago [default: 24h].
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Look for it before this time [default: now].
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// How long after it was published its consequences are looked for (a sink outage may
    /// hold them up).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub within: Duration,
    /// The deployed name of a topic, where it is not the component list's (repeat):
    /// `usage.events=prod.usage.events`.
    #[arg(long = "topic", value_name = "NAME=DEPLOYED")]
    pub topics: Vec<String>,
    /// The enricher's consumer group, whose changelog holds parked events.
    #[arg(long, default_value = "enricher", value_name = "GROUP")]
    pub enricher_group: String,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `replay dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Failed records grouped by error class and reason: counts, first and last failure,
    /// source topics.
    #[command(
        after_help = "Examples:\n  replay dlq list usage.events.dlq --json\n  replay dlq list billing.charges.dlq --tenant acme"
    )]
    List(ListArgs),
    /// Records as JSON: values decoded through the registry, every header.
    #[command(
        after_help = "Examples:\n  replay dlq show usage.events.dlq --limit 5\n  replay dlq show usage.events.dlq --partition 1 --offset 42\n  replay dlq show usage.events.dlq --partition 1 --offset 40..49 --compact"
    )]
    Show(ShowArgs),
}

/// `replay dlq list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Only dead letters of this tenant, the part of their key before the first `:` (repeat
    /// for any of several).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Vec<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `replay dlq show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Only this partition.
    #[arg(long, value_name = "N")]
    pub partition: Option<i32>,
    /// Only this offset (N) or these offsets (A..B, inclusive) of --partition.
    #[arg(long, value_name = "N|A..B", requires = "partition")]
    pub offset: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// One line per record.
    #[arg(long)]
    pub compact: bool,
}

/// `replay run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The topic to read: a dead-letter topic, or any topic with --to. May be left out when
    /// resuming with --replay-id.
    #[arg(required_unless_present = "replay_id")]
    pub source: Option<String>,
    /// Send every record here instead of to its backbone.origin.topic header.
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Records at or after this time: RFC 3339 (2026-11-27T03:00:00Z), a date, or a duration
    /// ago (2h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Records before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only this partition of the source.
    #[arg(long, value_name = "N")]
    pub partition: Option<i32>,
    /// Only these offsets of --partition: A..B (inclusive), A.., ..B or N.
    #[arg(long, value_name = "A..B", requires = "partition")]
    pub offsets: Option<String>,
    /// Only records with this key (repeat for any of several).
    #[arg(long, value_name = "KEY")]
    pub key: Vec<String>,
    /// Only records of this tenant, the part of their key before the first `:` (repeat for
    /// any of several).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Vec<String>,
    /// Only dead letters of this error class, e.g. permanent or transient (repeatable).
    #[arg(long, value_name = "CLASS")]
    pub error_class: Vec<String>,
    /// Only dead letters with this reason, e.g. unknown_schema_id (repeatable).
    #[arg(long, value_name = "REASON")]
    pub reason: Vec<String>,
    /// Only records with this header and value (repeat: all must match).
    #[arg(long, value_name = "NAME=VALUE")]
    pub header: Vec<String>,
    /// At most this many records (the first that match, partition by partition).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// At most this many records per second.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Print what would be sent and which records would fail again; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Resume this replay (or start one under this id). Printed when a replay starts.
    #[arg(long, value_name = "ID")]
    pub replay_id: Option<String>,
    /// Who runs the replay, for the replay headers and the audit.
    #[arg(long, env = "USER", default_value = "unknown")]
    pub operator: String,
    /// JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// How often sent records are awaited and a checkpoint written. Records sent since the
    /// last checkpoint are found again on resume, so this only trades resume time for
    /// throughput.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, hide = true)]
    pub checkpoint_interval: Duration,
}

/// `replay reset-offsets`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["to_time", "to_offset", "to_earliest", "to_latest"])))]
pub struct ResetArgs {
    /// The consumer group.
    #[arg(long, value_name = "GROUP")]
    pub group: String,
    /// The topic whose offsets move.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// To the first record at or after this time (RFC 3339, a date, or a duration ago).
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,
    /// To this offset (clamped to what each partition holds).
    #[arg(long, value_name = "N")]
    pub to_offset: Option<i64>,
    /// To each partition's first record.
    #[arg(long)]
    pub to_earliest: bool,
    /// To each partition's end.
    #[arg(long)]
    pub to_latest: bool,
    /// Only this partition.
    #[arg(long, value_name = "N")]
    pub partition: Option<i32>,
    /// Apply the move; without it, only the preview is printed.
    #[arg(long)]
    pub execute: bool,
    /// Apply even though the group has active members.
    #[arg(long, requires = "execute")]
    pub force: bool,
    /// Who resets, for the audit.
    #[arg(long, env = "USER", default_value = "unknown")]
    pub operator: String,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `replay audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only the last N actions.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only this action id (a replay id or a reset id).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("expected a duration like 5s or 1m: {e}"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("expected records per second, more than 0 (e.g. 50 or 0.5)".to_owned()),
    }
}

/// The config sections the tool reads from `--config` and the environment, with the same keys
/// as the processors.
#[derive(Debug, Deserialize)]
struct ToolConfig {
    #[serde(default)]
    kafka: KafkaSettings,
    #[serde(default)]
    schema_registry: SchemaRegistrySettings,
}

impl Validate for ToolConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.schema_registry.validate()
    }
}

impl Cli {
    /// The context the flags, `--config` and the environment describe.
    pub fn context(&self) -> Result<Context, ReplayError> {
        self.context_from(std::env::vars())
    }

    /// [`Cli::context`] with the environment given (tests use this).
    pub fn context_from(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Context, ReplayError> {
        let env = env.into_iter().filter(|(k, _)| {
            k.starts_with("BACKBONE__KAFKA__") || k.starts_with("BACKBONE__SCHEMA_REGISTRY__")
        });
        let config: ToolConfig =
            load_from(self.config.as_deref(), env).map_err(|e| ReplayError::Other {
                what: "configuration".into(),
                message: e.to_string(),
            })?;
        let mut kafka = config.kafka;
        if let Some(servers) = &self.bootstrap_servers {
            kafka.bootstrap_servers.clone_from(servers);
            kafka.validate().map_err(|e| {
                ReplayError::invalid(
                    "--bootstrap-servers",
                    servers,
                    e.to_string()
                        .rsplit_once(": expected ")
                        .map_or("host:port[,host:port...]".to_owned(), |(_, want)| {
                            want.to_owned()
                        }),
                )
            })?;
        }
        let mut registry = config.schema_registry;
        if let Some(url) = &self.registry_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ReplayError::invalid(
                    "--registry-url",
                    url,
                    "an http:// or https:// URL",
                ));
            }
            registry.url.clone_from(url);
        }
        let registry = registry.access().map_err(|e| ReplayError::Other {
            what: "configuration".into(),
            message: e.to_string(),
        })?;
        let mut ctx = Context::new(kafka, registry);
        ctx.timeout = self.timeout;
        ctx.checkpoint_topic.clone_from(&self.checkpoint_topic);
        ctx.audit_topic.clone_from(&self.audit_topic);
        Ok(ctx)
    }
}

/// Runs `cli`, printing results to stdout and progress and notes to stderr.
pub async fn execute(cli: Cli) -> Result<(), ReplayError> {
    let ctx = cli.context()?;
    let (kafka, timeout) = (ctx.kafka.clone(), ctx.timeout);
    tokio::task::spawn_blocking(move || check_connection(&kafka, timeout))
        .await
        .map_err(|join| ReplayError::Other {
            what: "connecting to Kafka".into(),
            message: join.to_string(),
        })?
        .map_err(|err| ReplayError::Other {
            what: "start-up".into(),
            message: err.to_string(),
        })?;
    let mut out = std::io::stdout();
    match cli.command {
        Command::Dlq(DlqCommand::List(args)) => {
            let summary = dlq::list(&ctx, &args.dlq_topic, &args.tenant).await?;
            if args.json {
                writeln!(out, "{}", to_json(&summary))?;
            } else {
                dlq::print_table(&summary, &mut out)?;
            }
        }
        Command::Dlq(DlqCommand::Show(args)) => {
            let offsets = args
                .offset
                .as_deref()
                .map(|o| OffsetRange::parse("--offset", o))
                .transpose()?;
            let options = dlq::ShowOptions {
                partition: args.partition,
                offsets,
                limit: args.limit,
                compact: args.compact,
            };
            let shown = dlq::show(&ctx, &args.dlq_topic, &options, &mut out).await?;
            if shown == 0 {
                eprintln!("`{}` holds no records", args.dlq_topic);
            }
        }
        Command::Run(args) => run(&ctx, *args, &mut out).await?,
        Command::ResetOffsets(args) => reset(&ctx, args, &mut out).await?,
        Command::Audit(args) => {
            let mut entries = audit::list(&ctx).await?;
            if let Some(id) = &args.id {
                entries.retain(|e| &e.id == id);
            }
            if let Some(limit) = args.limit {
                let skip = entries.len().saturating_sub(limit);
                entries.drain(..skip);
            }
            if args.json {
                writeln!(out, "{}", to_json(&entries))?;
            } else {
                audit::print_table(&entries, &mut out)?;
            }
        }
        Command::Tenant(command) => tenant_command(&ctx, command, &mut out).await?,
        Command::Orders(command) => crate::orders::command(&ctx, command, &mut out).await?,
        Command::Trace(args) => {
            let request = trace_request(&args, backbone_calendar::now_ms())?;
            let found = trace::trace(&ctx, &request).await?;
            if args.json {
                writeln!(out, "{}", to_json(&found))?;
            } else {
                trace::print_table(&found, &mut out)?;
            }
            if !found.found {
                out.flush()?;
                return Err(ReplayError::NeverSeen {
                    what: match &request.subject {
                        Traced::Event { event_id, .. } => format!("event `{event_id}`"),
                        Traced::Rating { rating_id } => format!("rated line `{rating_id}`"),
                    },
                    tenant: request.tenant,
                    since: found.searched_since,
                    until: found.searched_until,
                });
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs one `replay tenant` command.
async fn tenant_command(
    ctx: &Context,
    command: TenantCommand,
    out: &mut dyn Write,
) -> Result<(), ReplayError> {
    fn change(args: &ResumeArgs) -> tenant::Change<'_> {
        tenant::Change {
            topic: &args.controls.controls_topic,
            tenant: &args.tenant,
            stages: &args.stages,
            operator: &args.operator,
        }
    }
    match command {
        TenantCommand::Pause(args) => {
            let pauses = tenant::pause(ctx, &change(&args.change), &args.reason).await?;
            if args.change.controls.json {
                writeln!(out, "{}", to_json(&pauses))?;
            } else {
                writeln!(
                    out,
                    "paused tenant `{}` at {}",
                    args.change.tenant,
                    args.change.stages.join(", ")
                )?;
            }
        }
        TenantCommand::Resume(args) => {
            tenant::resume(ctx, &change(&args)).await?;
            if args.controls.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "resumed": args.tenant, "stages": args.stages })
                )?;
            } else {
                writeln!(
                    out,
                    "resumed tenant `{}` at {}",
                    args.tenant,
                    args.stages.join(", ")
                )?;
            }
        }
        TenantCommand::List(args) => {
            let pauses = tenant::list(ctx, &args.controls_topic).await?;
            if args.json {
                writeln!(out, "{}", to_json(&pauses))?;
            } else {
                tenant::print_table(&pauses, out)?;
            }
        }
    }
    Ok(())
}

/// The trace `args` ask for, with instants relative to `now_ms`.
fn trace_request(args: &TraceArgs, now_ms: i64) -> Result<TraceRequest, ReplayError> {
    let instant = |flag: &'static str, text: &str| {
        parse_instant(text, now_ms).ok_or_else(|| ReplayError::invalid(flag, text, INSTANT_FORMS))
    };
    let since_ms = match &args.since {
        Some(text) => instant("--since", text)?,
        None => now_ms - 24 * 3_600_000,
    };
    let until_ms = match &args.until {
        Some(text) => instant("--until", text)?,
        // A little past now: a record stamped by a clock ahead of ours is still found.
        None => now_ms + 60_000,
    };
    if until_ms <= since_ms {
        let until = args.until.as_deref().unwrap_or("now");
        return Err(ReplayError::invalid(
            "--until",
            until,
            "a time after --since",
        ));
    }
    let mut renamed = BTreeMap::new();
    for pair in &args.topics {
        let expected = format!("NAME=DEPLOYED, NAME one of {}", TRACED_TOPICS.join(", "));
        match pair.split_once('=') {
            Some((name, deployed)) if TRACED_TOPICS.contains(&name) && !deployed.is_empty() => {
                renamed.insert(name.to_owned(), deployed.to_owned());
            }
            _ => return Err(ReplayError::invalid("--topic", pair, expected)),
        }
    }
    let subject = match (&args.event_id, &args.rating_id) {
        (Some(event_id), _) => Traced::Event {
            event_id: event_id.clone(),
            source: args.source.clone(),
        },
        (None, Some(rating_id)) => Traced::Rating {
            rating_id: rating_id.clone(),
        },
        (None, None) => {
            return Err(ReplayError::invalid(
                "--event-id",
                "",
                "an event id or --rating-id",
            ))
        }
    };
    Ok(TraceRequest {
        tenant: args.tenant.clone(),
        subject,
        window: Window { since_ms, until_ms },
        within_ms: i64::try_from(args.within.as_millis()).unwrap_or(i64::MAX),
        topics: TopicNames::new(renamed, &args.enricher_group),
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

async fn run(
    ctx: &Context,
    args: RunArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), ReplayError> {
    let filters = FilterArgs {
        since: args.since,
        until: args.until,
        partition: args.partition,
        offsets: args.offsets,
        keys: args.key,
        tenants: args.tenant,
        error_classes: args.error_class,
        reasons: args.reason,
        headers: args.header,
        limit: args.limit,
    };
    // A malformed filter is reported before anything else is tried.
    Filter::parse(&filters, backbone_calendar::now_ms())?;
    let replay_id = args
        .replay_id
        .clone()
        .unwrap_or_else(republish::new_replay_id);
    if !args.dry_run {
        eprintln!("replay id {replay_id} (resume with: replay run --replay-id {replay_id})");
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop));
    let options = RunOptions {
        source: args.source,
        to: args.to,
        filters,
        rate: args.rate,
        dry_run: args.dry_run,
        replay_id: Some(replay_id),
        operator: args.operator,
        json: args.json,
        progress: ProgressMode::Auto,
        checkpoint_interval: args.checkpoint_interval,
        stop: Some(stop),
    };
    let summary = republish::run(ctx, &options, out).await?;
    if args.json {
        writeln!(out, "{}", to_json(&summary))?;
    } else {
        republish::print_summary(&summary, out)?;
    }
    if summary.interrupted {
        return Err(ReplayError::Interrupted {
            replay_id: summary.replay_id,
        });
    }
    Ok(())
}

/// Ctrl-C or SIGTERM asks a replay to stop after its sends are acknowledged and checkpointed.
fn watch_signals(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopping: awaiting the records in flight and writing the checkpoint");
        stop.store(true, Ordering::Relaxed);
    });
}

async fn reset(
    ctx: &Context,
    args: ResetArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), ReplayError> {
    let target = match (&args.to_time, args.to_offset) {
        (Some(time), _) => offsets::parse_target_time(time)?,
        (None, Some(offset)) if offset < 0 => {
            return Err(ReplayError::invalid(
                "--to-offset",
                &offset.to_string(),
                "an offset, 0 or more",
            ))
        }
        (None, Some(offset)) => ResetTarget::Offset(offset),
        (None, None) if args.to_earliest => ResetTarget::Earliest,
        (None, None) => ResetTarget::Latest,
    };
    let mut plan = offsets::plan(ctx, &args.group, &args.topic, target, args.partition).await?;
    let result = if args.execute {
        offsets::execute(ctx, &mut plan, args.force, &args.operator).await
    } else {
        Ok(())
    };
    if args.json {
        writeln!(out, "{}", to_json(&plan))?;
    } else {
        offsets::print_plan(&plan, out)?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_teaches_with_examples() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("replay dlq list billing.charges.dlq"),
            "{help}"
        );
        let mut command = Cli::command();
        let run = command.find_subcommand_mut("run").expect("run");
        let help = run.render_long_help().to_string();
        assert!(help.contains("--dry-run"), "{help}");
        assert!(
            help.contains("replay run usage.events.dlq --since 2h --rate 20"),
            "{help}"
        );
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_config_file() {
        let dir = std::env::temp_dir().join(format!("replay-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("billing-sink.toml");
        std::fs::write(
            &file,
            "[kafka]\nbootstrap_servers = \"10.0.0.1:9092\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n[schema_registry]\nurl = \"http://10.0.0.2:8081\"\n[runtime]\ngroup_id = \"billing-sink\"\n",
        )
        .expect("config file");
        let config = file.to_string_lossy().into_owned();
        let parse = |args: &[&str]| {
            let mut all = vec!["replay", "--config", config.as_str()];
            all.extend(args);
            all.push("audit");
            Cli::try_parse_from(all).expect("arguments")
        };
        let none: Vec<(String, String)> = Vec::new();
        let ctx = parse(&[]).context_from(none.clone()).expect("context");
        assert_eq!(ctx.kafka.bootstrap_servers, "10.0.0.1:9092");
        assert_eq!(
            ctx.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(ctx.registry.url(), "http://10.0.0.2:8081");
        let env = vec![
            (
                "BACKBONE__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                "10.0.0.3:9092".to_owned(),
            ),
            ("BACKBONE__RUNTIME__GROUP_ID".to_owned(), "x".to_owned()),
        ];
        let ctx = parse(&[]).context_from(env.clone()).expect("context");
        assert_eq!(ctx.kafka.bootstrap_servers, "10.0.0.3:9092");
        let ctx = parse(&["--bootstrap-servers", "127.0.0.1:29092"])
            .context_from(env)
            .expect("context");
        assert_eq!(ctx.kafka.bootstrap_servers, "127.0.0.1:29092");
        let defaults = Cli::try_parse_from(["replay", "audit"])
            .expect("arguments")
            .context_from(none.clone())
            .expect("context");
        assert_eq!(defaults.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(defaults.registry.url(), "http://127.0.0.1:8081");
        let err = parse(&["--bootstrap-servers", "nohost"])
            .context_from(none.clone())
            .expect_err("bad servers");
        assert!(
            err.to_string()
                .starts_with("invalid --bootstrap-servers \"nohost\": expected host:port"),
            "{err}"
        );
        let err = parse(&["--registry-url", "127.0.0.1:8081"])
            .context_from(none)
            .expect_err("bad url");
        assert!(err.to_string().contains("--registry-url"), "{err}");
    }

    #[test]
    fn offsets_need_a_partition_and_a_reset_needs_a_target() {
        let err = Cli::try_parse_from(["replay", "run", "x.dlq", "--offsets", "1..2"])
            .expect_err("offsets without partition");
        assert!(err.to_string().contains("--partition"), "{err}");
        let err = Cli::try_parse_from(["replay", "reset-offsets", "--group", "g", "--topic", "t"])
            .expect_err("no target");
        assert!(err.to_string().contains("--to-time"), "{err}");
        let err =
            Cli::try_parse_from(["replay", "run", "x.dlq", "--rate", "0"]).expect_err("zero rate");
        assert!(err.to_string().contains("--rate"), "{err}");
        let ok =
            Cli::try_parse_from(["replay", "run", "--replay-id", "r-1"]).expect("resume by id");
        assert!(matches!(ok.command, Command::Run(args) if args.source.is_none()));
        assert!(
            Cli::try_parse_from(["replay", "run"]).is_err(),
            "a source or an id"
        );
    }

    #[test]
    fn a_trace_names_what_it_traces_and_refuses_unusable_flags() {
        let parse = |args: &[&str]| {
            let mut all = vec!["replay", "trace", "--tenant", "acme"];
            all.extend(args);
            match Cli::try_parse_from(all).expect("arguments").command {
                Command::Trace(args) => args,
                other => panic!("{other:?}"),
            }
        };
        assert!(
            Cli::try_parse_from(["replay", "trace", "--tenant", "acme"]).is_err(),
            "an event or a rating id"
        );
        let now = 1_800_000_000_000;
        let request = trace_request(&parse(&["--event-id", "e-1"]), now).expect("request");
        assert_eq!(request.window.since_ms, now - 24 * 3_600_000);
        assert_eq!(request.topics.of("usage.events"), "usage.events");
        assert_eq!(request.topics.enricher_changelog, "enricher.changelog");
        let request = trace_request(
            &parse(&[
                "--charge-id",
                "rtg-1",
                "--topic",
                "usage.rated=prod.usage.rated",
                "--enricher-group",
                "prod-enricher",
            ]),
            now,
        )
        .expect("request");
        assert_eq!(
            request.subject,
            Traced::Rating {
                rating_id: "rtg-1".into()
            }
        );
        assert_eq!(request.topics.dlq("usage.rated"), "prod.usage.rated.dlq");
        assert_eq!(request.topics.enricher_changelog, "prod-enricher.changelog");
        let err = trace_request(
            &parse(&["--event-id", "e", "--topic", "usage.rates=x"]),
            now,
        )
        .expect_err("unknown topic");
        assert!(
            err.to_string()
                .starts_with("invalid --topic \"usage.rates=x\": expected NAME=DEPLOYED"),
            "{err}"
        );
        let err = trace_request(
            &parse(&["--event-id", "e", "--since", "2h", "--until", "3h"]),
            now,
        )
        .expect_err("until before since");
        assert!(err.to_string().contains("--until"), "{err}");
        let err = trace_request(&parse(&["--event-id", "e", "--since", "soon"]), now)
            .expect_err("bad time");
        assert!(err.to_string().contains("--since \"soon\""), "{err}");
    }
}
