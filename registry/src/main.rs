//! `schema-registry`: see the library crate.

use std::process::ExitCode;

use backbone_core::app::ServiceArgs;
use backbone_registry::RegistryConfig;

#[tokio::main]
async fn main() -> ExitCode {
    // The flags every Backbone service takes: --config, --log-format, --check-config.
    let args = ServiceArgs::parse_for(
        "schema-registry",
        "A Confluent-compatible schema registry storing schemas in a Kafka topic",
    );
    let config: RegistryConfig = match args.start("schema-registry", |_| Ok(())) {
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
