//! `schema-registry`: see the library crate.

use std::path::PathBuf;
use std::process::ExitCode;

use backbone_core::telemetry::{self, LogFormat};
use backbone_registry::RegistryConfig;
use clap::Parser;

/// A Confluent-compatible schema registry storing schemas in a Kafka topic.
#[derive(Debug, Parser)]
#[command(name = "schema-registry", version)]
struct Args {
    /// TOML config file; every key may also be set as BACKBONE__<SECTION>__<KEY>.
    #[arg(long, env = "BACKBONE_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format: text or json.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config: RegistryConfig = match backbone_core::config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("schema-registry: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(args.log_format);
    let listener = match tokio::net::TcpListener::bind(config.registry.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "schema-registry: config key `registry.listen`: cannot listen on {}: {err}",
                config.registry.listen
            );
            return ExitCode::from(2);
        }
    };
    match backbone_registry::serve(&config, listener, backbone_core::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "schema registry stopped");
            ExitCode::FAILURE
        }
    }
}
