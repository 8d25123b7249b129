//! `enricher`: see the library crate.

use backbone_enricher::Enricher;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<Enricher>().await
}
