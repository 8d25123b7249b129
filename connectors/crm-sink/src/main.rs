//! `crm-sink`: see the library crate.

use backbone_crm_sink::CrmSink;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_sink::app::serve::<CrmSink>().await
}
