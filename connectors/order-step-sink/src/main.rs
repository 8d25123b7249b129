//! `order-step-sink`: see the library crate.

use backbone_order_step_sink::OrderStepSink;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_sink::app::serve::<OrderStepSink>().await
}
