//! `billing-sink`: see the library crate.

use backbone_billing_sink::BillingSink;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_sink::app::serve::<BillingSink>().await
}
