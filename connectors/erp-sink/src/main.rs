//! `erp-sink`: see the library crate.

use backbone_erp_sink::ErpSink;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_sink::app::serve::<ErpSink>().await
}
