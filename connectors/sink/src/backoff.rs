//! How long to wait before the next attempt.

use std::time::Duration;

use crate::settings::RetrySettings;

/// The wait before attempt `attempt + 1`, after `attempt` failed ones (at least 1).
///
/// The ceiling doubles per attempt from `initial_backoff` up to `max_backoff`; the wait is
/// drawn uniformly below it ("full jitter"), so sinks that failed together do not retry in
/// step. A `Retry-After` from the destination is a floor, capped at `max_retry_after`.
pub fn delay(settings: &RetrySettings, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = ceiling(settings, attempt);
    let jittered = ceiling.mul_f64(fastrand::f64());
    match retry_after {
        Some(after) => jittered.max(after.min(settings.max_retry_after)),
        None => jittered,
    }
}

/// The upper bound of the wait after `attempt` failed attempts.
pub fn ceiling(settings: &RetrySettings, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    settings
        .initial_backoff
        .saturating_mul(1 << doublings)
        .min(settings.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RetrySettings {
        RetrySettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_ceiling_doubles_and_stays_capped() {
        let s = settings();
        assert_eq!(ceiling(&s, 1), Duration::from_millis(100));
        assert_eq!(ceiling(&s, 2), Duration::from_millis(200));
        assert_eq!(ceiling(&s, 5), Duration::from_millis(1_600));
        assert_eq!(ceiling(&s, 6), Duration::from_secs(2));
        assert_eq!(ceiling(&s, 1_000), Duration::from_secs(2));
    }

    #[test]
    fn waits_are_jittered_below_the_ceiling() {
        let s = settings();
        let waits: Vec<Duration> = (0..200).map(|_| delay(&s, 4, None)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(800)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 50,
            "jitter spreads the waits: {}",
            distinct.len()
        );
    }

    #[test]
    fn retry_after_is_a_floor_with_a_cap() {
        let s = settings();
        for _ in 0..50 {
            assert!(delay(&s, 1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
        assert_eq!(
            delay(&s, 1, Some(Duration::from_secs(3_600))),
            Duration::from_secs(60)
        );
    }
}
