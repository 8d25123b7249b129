//! How a binary is asked to stop: process signals, and the watch its loops select on.

use std::future::Future;
use std::time::Instant;

use tokio::sync::watch;

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

/// Completes once a stop was asked for on `stop`, or nobody is left to ask for one. Returns
/// `()` rather than the watch's read guard, which must not live across the awaits of the
/// handler that stops the loop.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Completes at `at`, or never when there is no deadline: for one branch of a `select!`.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
