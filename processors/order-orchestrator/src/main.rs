//! `order-orchestrator`: see the library crate.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<backbone_order_orchestrator::OrderOrchestrator>().await
}
