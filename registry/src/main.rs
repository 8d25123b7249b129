//! `schema-registry`: see the library crate.

use std::io::BufRead as _;
use std::process::ExitCode;

use backbone_core::app::ServiceArgs;
use backbone_registry::RegistryConfig;
use clap::Parser;

/// A Confluent-compatible schema registry storing schemas in a Kafka topic
#[derive(Debug, Parser)]
#[command(name = "schema-registry")]
struct Cli {
    /// The flags every Backbone service takes: --config, --log-format, --print-config.
    #[command(flatten)]
    service: ServiceArgs,
    /// Read a password from standard input, print its Argon2id hash for a line of the users
    /// file (`name:role:hash`), and exit.
    #[arg(long)]
    hash_password: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.hash_password {
        return hash_password();
    }
    let config: RegistryConfig = match cli.service.start("schema-registry", |_| Ok(())) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(err) = backbone_core::connect::await_cluster(&config.kafka).await {
        eprintln!("schema-registry: {err}");
        return ExitCode::from(2);
    }
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

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("schema-registry: reading the password from standard input: {err}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("schema-registry: --hash-password: standard input held no password");
        return ExitCode::from(2);
    }
    match backbone_registry::users::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("schema-registry: hashing the password: {err}");
            ExitCode::FAILURE
        }
    }
}
