//! `replay`: inspect dead-letter topics, republish records, move consumer groups, with an
//! audit trail. Everything lives in the `backbone_replay` library; this only parses the
//! command line and turns an error into a message and an exit code.

use std::process::ExitCode;

use backbone_replay::cli::{execute, Cli};
use backbone_replay::ReplayError;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = execute(cli).await.map_err(anyhow::Error::from);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Our messages already name their cause.
            eprintln!("replay: error: {err}");
            let code = err
                .downcast_ref::<ReplayError>()
                .map_or(1, ReplayError::exit_code);
            ExitCode::from(code)
        }
    }
}
