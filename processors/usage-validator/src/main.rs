//! `usage-validator`: see the library crate.

use backbone_usage_validator::UsageValidator;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<UsageValidator>().await
}
