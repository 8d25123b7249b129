//! `tally`: the Tally test processor as a process of its own, so that tests can kill it.

use backbone_testkit::Tally;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<Tally>().await
}
