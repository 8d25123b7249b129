//! Process signals that ask a binary to stop gracefully.

use std::future::Future;

/// Completes on SIGINT or SIGTERM. The SIGTERM handler is installed when this is called, not
/// when the future is first polled: a stop asked for during start-up is then a graceful stop
/// too, never the signal's default of killing the process.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            if let Some(mut terminate) = terminate {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
        }
        let _ = ctrl_c.await;
    }
}
