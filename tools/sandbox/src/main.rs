//! `sandbox`: see the library crate.

use std::net::SocketAddr;
use std::process::ExitCode;

use backbone_core::app::ServiceArgs;
use backbone_sandbox::SandboxConfig;
use clap::Parser;

/// Simulated billing, CRM, ERP, product-platform and sales-platform APIs with fault injection,
/// for tests and the demo.
#[derive(Debug, Parser)]
#[command(name = "sandbox", version)]
struct Args {
    /// The flags every Backbone service takes: --config, --log-format, --check-config.
    #[command(flatten)]
    service: ServiceArgs,
    /// Address to listen on, overriding the config's `listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config: SandboxConfig = match args.service.start("sandbox", |_| Ok(())) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("sandbox: cannot listen on {}: {err}", config.listen);
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        // Scripts and tests wait for this line before calling the APIs.
        Ok(address) => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            println!("sandbox listening on {scheme}://{address}");
        }
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
