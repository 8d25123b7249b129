//! `usage-rater`: see the library crate.

use backbone_usage_rater::UsageRater;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<UsageRater>().await
}
