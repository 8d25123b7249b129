//! `fanout`: see the library crate.

use backbone_fanout::Fanout;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<Fanout>().await
}
