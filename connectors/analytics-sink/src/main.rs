//! `analytics-sink`: see the library crate.

use backbone_analytics_sink::AnalyticsSink;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_sink::app::serve::<AnalyticsSink>().await
}
