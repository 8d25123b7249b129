//! `period-close`: see the library crate.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_core::app::serve::<backbone_period_close::PeriodClose>().await
}
