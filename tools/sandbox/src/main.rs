//! `sandbox`: see the library crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use backbone_core::telemetry::{self, LogFormat};
use backbone_sandbox::SandboxConfig;
use clap::Parser;

/// Simulated billing, CRM and ERP APIs with fault injection, for tests and the demo.
#[derive(Debug, Parser)]
#[command(name = "sandbox", version)]
struct Args {
    /// TOML config file; every key may also be set as BACKBONE__<SECTION>__<KEY>.
    #[arg(long, env = "BACKBONE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the config's `listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Log line format: text or json.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config: SandboxConfig = match backbone_core::config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("sandbox: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    telemetry::init(args.log_format);
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("sandbox: cannot listen on {}: {err}", config.listen);
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        // Scripts and tests wait for this line before calling the APIs.
        Ok(address) => println!("sandbox listening on http://{address}"),
        Err(err) => {
            eprintln!("sandbox: {err}");
            return ExitCode::FAILURE;
        }
    }
    match backbone_sandbox::serve(listener, config, backbone_core::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "sandbox stopped");
            ExitCode::FAILURE
        }
    }
}
