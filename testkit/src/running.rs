//! A processor running in the test's own process, on the shared runtime.

use std::future::Future;
use std::time::Duration;

use backbone_core::{run, KafkaSettings, Processor, RunSummary, RuntimeError, RuntimeSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A processor run by [`backbone_core::run`] on a task of its own until [`stop`](Self::stop).
#[derive(Debug)]
pub struct RunningProcessor {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<RunSummary, RuntimeError>>,
}

impl RunningProcessor {
    /// Starts `processor` with `kafka` and `settings`.
    pub fn start<P: Processor + Sync + 'static>(
        processor: P,
        kafka: &KafkaSettings,
        settings: RuntimeSettings,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let kafka = kafka.clone();
        let handle = tokio::spawn(async move {
            run(processor, &kafka, &settings, async move {
                let _ = stopped.await;
            })
            .await
        });
        Self { stop, handle }
    }

    /// Awaits `wait` while the run goes on; panics with the run's outcome if it ends first, so
    /// that a wait for progress from a processor that has failed says why instead of timing out.
    pub async fn during<T>(&mut self, wait: impl Future<Output = T>) -> T {
        tokio::select! {
            value = wait => value,
            ended = &mut self.handle => panic!("the processor's run ended while the test waited on it: {ended:?}"),
        }
    }

    /// Asks for a graceful stop and returns what the run did; panics if it failed or took
    /// longer than `deadline`.
    pub async fn stop(self, deadline: Duration) -> RunSummary {
        let _ = self.stop.send(());
        tokio::time::timeout(deadline, self.handle)
            .await
            .expect("the processor stops in time")
            .expect("the processor's task")
            .expect("the run succeeds")
    }

    /// Waits for the run to end on its own (an error, a fence), at most `deadline`.
    pub async fn finished(self, deadline: Duration) -> Result<RunSummary, RuntimeError> {
        tokio::time::timeout(deadline, self.handle)
            .await
            .expect("the processor stops on its own in time")
            .expect("the processor's task")
    }
}
