//! `month-end`: see the library crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backbone_calendar::{day_of_micros, now_micros};
use backbone_month_end::batch::Period;
use backbone_month_end::{run_period, MonthEndConfig, MonthEndError, Outcome};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "month-end",
    about = "Builds the month-end batch of every legal entity into the outbox, once the month is closed",
    after_help = "Exit status: 0 when every batch was written or found unchanged, 3 while a legal \
entity's period is still open, 2 for bad input or config, 1 for any other failure.\n\n\
Examples:\n  month-end --period 2026-10\n  month-end --every 1h   # the newest closed month, \
and the one before for late invoices, every hour"
)]
struct Args {
    /// TOML config file; every key may also be set as BACKBONE__<SECTION>__<KEY>.
    #[arg(long, env = "BACKBONE_CONFIG")]
    config: Option<PathBuf>,
    /// The month to build, YYYY-MM.
    #[arg(long, conflicts_with = "every", required_unless_present = "every")]
    period: Option<String>,
    /// Timer mode: every this long (e.g. 1h), build the last two months that are closed.
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    every: Option<Duration>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config: MonthEndConfig = match backbone_core::config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("month-end: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match (args.period, args.every) {
        (Some(period), _) => match Period::parse(&period) {
            Ok(period) => run_period(&config, period, now_micros())
                .await
                .map(|outcomes| report(&outcomes)),
            Err(err) => Err(err),
        },
        (None, Some(every)) => timer(&config, every).await,
        (None, None) => unreachable!("clap requires one"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("month-end: {err}");
            ExitCode::from(match err {
                MonthEndError::NotClosed { .. } => 3,
                MonthEndError::Input { .. } => 2,
                _ => 1,
            })
        }
    }
}

fn report(outcomes: &[Outcome]) {
    for outcome in outcomes {
        match outcome {
            Outcome::Written { dir, manifest } => {
                let totals: Vec<String> = manifest
                    .control_totals
                    .iter()
                    .map(|t| format!("{} {} invoiced", t.currency, t.invoiced))
                    .collect();
                println!(
                    "{}/{} {} batch {:03} ({}): {} invoices{}{} -> {}",
                    manifest.entity.tenant,
                    manifest.entity.legal_entity_id,
                    manifest.period,
                    manifest.sequence,
                    manifest.kind,
                    manifest.invoices.len(),
                    if totals.is_empty() { "" } else { ", " },
                    totals.join(", "),
                    dir.display()
                );
            }
            Outcome::Unchanged { entity, batches } => println!(
                "{}/{}: unchanged ({batches} batches, each byte for byte what its invoices give)",
                entity.tenant, entity.legal_entity_id
            ),
        }
    }
}

/// Every `every`, the last two closed months; a month still open is waited for, not an error.
async fn timer(config: &MonthEndConfig, every: Duration) -> Result<(), MonthEndError> {
    let stop = backbone_core::shutdown::signal();
    tokio::pin!(stop);
    loop {
        let now = now_micros();
        let this_month = Period::of_day(day_of_micros(now));
        for period in [this_month.previous().previous(), this_month.previous()] {
            match run_period(config, period, now).await {
                Ok(outcomes) => report(&outcomes),
                Err(err @ MonthEndError::NotClosed { .. }) => println!("{period}: waiting: {err}"),
                Err(err) => return Err(err),
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}
