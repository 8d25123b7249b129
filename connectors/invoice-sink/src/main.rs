//! `invoice-sink`: see the library crate.

use backbone_invoice_sink::InvoiceSink;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    backbone_sink::app::serve::<InvoiceSink>().await
}
