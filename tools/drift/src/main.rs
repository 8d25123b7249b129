//! `drift`: see the library crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backbone_core::endpoint::{Readiness, RunningEndpoint};
use backbone_core::telemetry::{self, LogFormat};
use backbone_drift::books::Books;
use backbone_drift::metrics::DriftGauges;
use backbone_drift::{holdings, reconcile_once, render_table, DriftConfig, TopicReader};
use backbone_schemas::WireCodec;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "drift",
    about = "Compares what was accepted, rated, billed, journalled and shown in the CRM",
    after_help = "Checks: usage_vs_rated (quantity the rater accepted vs rated), rated_vs_billed \
(rated amount vs the billing system's charges), rated_vs_erp (rated amount vs receivables in \
ERP journals), accounts_vs_crm (customers with rated usage in master data vs CRM accounts), \
rated_vs_invoiced (rated amount vs the lines of issued invoices that name it), invoiced_vs_erp \
(issued invoices' totals vs the invoices the ERP received).\n\n\
Examples:\n  drift report\n  drift report --json --fail-on-drift\n  drift serve   # gauges on \
drift.listen, every drift.interval"
)]
struct Args {
    /// TOML config file; every key may also be set as BACKBONE__<SECTION>__<KEY>.
    #[arg(long, env = "BACKBONE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile once and print the differences as a table.
    Report {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Exit with status 1 when any check differs.
        #[arg(long)]
        fail_on_drift: bool,
        /// Only this tenant's lines.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Follow the topics and export the differences as gauges on `drift.listen`.
    Serve {
        /// Log line format: text or json.
        #[arg(long, default_value = "text")]
        log_format: LogFormat,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config: DriftConfig = match backbone_core::config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("drift: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = backbone_core::connect::await_cluster(&config.kafka).await {
        eprintln!("drift: {err}");
        return ExitCode::from(2);
    }
    let result = match args.command {
        Command::Report {
            json,
            fail_on_drift,
            tenant,
        } => report(&config, json, tenant.as_deref())
            .await
            .map(|drifted| {
                if drifted && fail_on_drift {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }),
        Command::Serve { log_format } => {
            telemetry::init(log_format);
            serve(&config).await.map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|err| {
        eprintln!("drift: {err:#}");
        ExitCode::FAILURE
    })
}

/// One reconciliation, printed. Returns whether anything differs.
async fn report(config: &DriftConfig, json: bool, tenant: Option<&str>) -> Result<bool> {
    let mut lines = reconcile_once(config).await?;
    if let Some(tenant) = tenant {
        lines.retain(|l| l.key.tenant == tenant);
    }
    let drifted = lines.iter().any(|l| l.difference() != 0);
    if json {
        for line in &lines {
            let value = serde_json::json!({
                "check": line.key.check.as_str(),
                "tenant": line.key.tenant,
                "period": line.key.period,
                "legal_entity": line.key.legal_entity,
                "currency": line.key.currency,
                "expected": line.format(line.expected),
                "observed": line.format(line.observed),
                "difference": line.format(line.difference()),
                "relative": line.relative(),
            });
            println!("{value}");
        }
    } else {
        print!("{}", render_table(&lines));
    }
    Ok(drifted)
}

/// Follows the topics and republishes the gauges every `drift.interval` until SIGINT/SIGTERM.
async fn serve(config: &DriftConfig) -> Result<()> {
    let settings = &config.drift;
    let registry = prometheus::Registry::new();
    let gauges = DriftGauges::new(&registry).context("registering the drift gauges")?;
    let readiness = Readiness::new();
    let endpoint =
        RunningEndpoint::start("drift.listen", settings.listen, registry, readiness.clone())
            .await?;
    let stop = backbone_core::shutdown::signal();
    let codec = WireCodec::new(config.schema_registry.access()?);
    let reader = TopicReader::new(&config.kafka, settings, codec)?;
    let mut books = Books::default();
    reader.catch_up(&mut books).await?;
    let systems = settings.systems()?;
    tokio::pin!(stop);
    loop {
        match holdings(&systems).await {
            Ok(held) => {
                gauges.publish(&books.reconcile(&held));
                readiness.set_ready(true);
            }
            Err(err) => {
                tracing::warn!(error = %err, "reconciliation skipped; the gauges keep their last values")
            }
        }
        let next = Instant::now() + settings.interval;
        while Instant::now() < next {
            tokio::select! {
                _ = &mut stop => {
                    endpoint.stop().await;
                    return Ok(());
                }
                read = reader.poll(&mut books, Duration::from_millis(100)) => { read?; }
            }
        }
    }
}
