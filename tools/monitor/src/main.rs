//! `monitor`: see the library crate.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use backbone_core::app::ServiceArgs;
use backbone_core::endpoint::{Readiness, RunningEndpoint};
use backbone_core::table::{Align, Table};
use backbone_monitor::{LagGauges, LagMonitor, MonitorConfig, PartitionLag};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "monitor",
    about = "Exports the consumer lag of every backbone consumer group, in records and seconds",
    after_help = "Examples:\n  monitor                 # serve /metrics on monitor.listen\n  monitor --once          # print one measurement and exit"
)]
struct Args {
    /// The flags every Backbone service takes: --config, --log-format, --check-config.
    #[command(flatten)]
    service: ServiceArgs,
    /// Measure once, print a table, exit.
    #[arg(long)]
    once: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Logs go to stderr: a --once table on stdout stays clean.
    let config: MonitorConfig = match args.service.start("monitor", |_| Ok(())) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(err) = backbone_core::connect::await_cluster(&config.kafka).await {
        eprintln!("monitor: {err}");
        return ExitCode::from(2);
    }
    let result = if args.once {
        once(&config).await
    } else {
        serve(&config).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("monitor: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn measure(monitor: &Arc<LagMonitor>) -> Result<Vec<PartitionLag>> {
    let monitor = Arc::clone(monitor);
    Ok(tokio::task::spawn_blocking(move || monitor.measure())
        .await
        .context("measuring lag")??)
}

async fn once(config: &MonitorConfig) -> Result<()> {
    let monitor = Arc::new(LagMonitor::new(&config.kafka, &config.monitor)?);
    let lags = measure(&monitor).await?;
    let mut table = Table::new(
        [
            "group",
            "topic",
            "partition",
            "committed",
            "end",
            "lag",
            "lag (s)",
        ],
        [
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    );
    for lag in &lags {
        table.row([
            lag.group.clone(),
            lag.topic.clone(),
            lag.partition.to_string(),
            lag.committed.to_string(),
            lag.end.to_string(),
            lag.records().to_string(),
            format!("{:.1}", lag.age.map_or(0.0, |a| a.as_secs_f64())),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

async fn serve(config: &MonitorConfig) -> Result<()> {
    let settings = &config.monitor;
    let registry = prometheus::Registry::new();
    let gauges = LagGauges::new(&registry).context("registering the lag gauges")?;
    let readiness = Readiness::new();
    let endpoint = RunningEndpoint::start(
        "monitor.listen",
        settings.listen,
        registry,
        readiness.clone(),
    )
    .await?;
    let stop = backbone_core::shutdown::signal();
    let monitor = Arc::new(LagMonitor::new(&config.kafka, settings)?);
    tokio::pin!(stop);
    loop {
        match measure(&monitor).await {
            Ok(lags) => {
                gauges.publish(&lags);
                readiness.set_ready(true);
            }
            Err(err) => {
                tracing::warn!(error = %err, "lag not measured; the gauges keep their last values")
            }
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(settings.interval) => {}
        }
    }
    endpoint.stop().await;
    Ok(())
}
