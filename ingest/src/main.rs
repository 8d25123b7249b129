//! `ingest`: see the library crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use backbone_core::app::ServiceArgs;
use backbone_ingest::keys::{self, KeySet, NewKey};
use backbone_ingest::IngestConfig;
use clap::{Parser, Subcommand};

/// An HTTP gateway taking CloudEvents from producers that cannot run a Kafka client
#[derive(Debug, Parser)]
#[command(name = "ingest")]
struct Cli {
    /// The flags every Backbone service takes: --config, --log-format, --print-config.
    #[command(flatten)]
    service: ServiceArgs,
    /// Without a command the gateway serves.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make, list and revoke producer API keys.
    Keys {
        /// The keys file; `ingest.keys_file` of the config by default.
        #[arg(long, global = true)]
        keys_file: Option<PathBuf>,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Make a key and print it; it is shown this once.
    Create {
        /// Tenant every event of the key belongs to.
        #[arg(long)]
        tenant: String,
        /// An event type the key may publish (repeat for more).
        #[arg(long = "type", required = true)]
        event_types: Vec<String>,
        /// Events per second, instead of the gateway's `ingest.rate_per_second`.
        #[arg(long)]
        rate_per_second: Option<f64>,
        /// Events per UTC day, instead of the gateway's `ingest.daily_quota`.
        #[arg(long)]
        daily_quota: Option<u64>,
    },
    /// List the keys (ids, tenants, types, limits; never secrets).
    List,
    /// Revoke a key by id; the gateway refuses it within `ingest.keys_reload_interval`.
    Revoke {
        /// The key's id (the part after `bbk_`, before the next `_`).
        id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Keys { keys_file, action }) => {
            match manage_keys(&cli.service, keys_file, action) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("ingest: {err:#}");
                    ExitCode::from(2)
                }
            }
        }
        None => serve(&cli.service).await,
    }
}

async fn serve(service: &ServiceArgs) -> ExitCode {
    let config: IngestConfig = match service.start("ingest", |_| Ok(())) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let access = match config.schema_registry.access() {
        Ok(access) => access,
        Err(err) => {
            eprintln!("ingest: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = backbone_core::connect::await_cluster(&config.kafka).await {
        eprintln!("ingest: {err}");
        return ExitCode::from(2);
    }
    let listen = config.ingest.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("ingest: config key `ingest.listen`: cannot listen on {listen}: {err}");
            return ExitCode::from(2);
        }
    };
    match backbone_ingest::serve(&config, access, listener, backbone_core::shutdown::signal()).await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            err @ (backbone_ingest::IngestError::Keys(_) | backbone_ingest::IngestError::Config(_)),
        ) => {
            eprintln!("ingest: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            tracing::error!(error = %err, "ingest gateway stopped");
            ExitCode::FAILURE
        }
    }
}

fn manage_keys(
    service: &ServiceArgs,
    keys_file: Option<PathBuf>,
    action: KeysAction,
) -> anyhow::Result<()> {
    let path = match keys_file {
        Some(path) => path,
        None => {
            let config: IngestConfig = backbone_core::config::load(service.config.as_deref())?;
            config.ingest.keys_file
        }
    };
    match action {
        KeysAction::Create {
            tenant,
            event_types,
            rate_per_second,
            daily_quota,
        } => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let new = NewKey {
                tenant,
                event_types,
                rate_per_second,
                daily_quota,
            };
            let (key, token) = keys::create(&path, new, now)?;
            eprintln!(
                "ingest: key {} for tenant {} written to {}; the key below is shown only now",
                key.id,
                key.tenant,
                path.display()
            );
            println!("{token}");
        }
        KeysAction::List => {
            let set = KeySet::load(&path).with_context(|| format!("listing {}", path.display()))?;
            println!("id\ttenant\tevent_types\trate_per_second\tdaily_quota\trevoked");
            for key in set.keys() {
                let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".to_owned());
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.tenant,
                    key.event_types.join(","),
                    or_default(key.rate_per_second.map(|r| r.to_string())),
                    or_default(key.daily_quota.map(|q| q.to_string())),
                    key.revoked
                );
            }
        }
        KeysAction::Revoke { id } => {
            let key = keys::revoke(&path, &id)?;
            eprintln!("ingest: key {} of tenant {} revoked", key.id, key.tenant);
        }
    }
    Ok(())
}
