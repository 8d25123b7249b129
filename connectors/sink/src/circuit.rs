//! The circuit breaker: after enough consecutive failures the destination counts as down, the
//! sink stops sending (and pauses its input partitions) for a while, then sends one probe.

use std::time::{Duration, Instant};

use crate::settings::CircuitSettings;

/// The breaker's state, exported as a gauge (`0` closed, `1` open, `2` half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Deliveries flow.
    Closed,
    /// The destination counts as down: nothing is sent until the probe time.
    Open,
    /// The next attempt is the probe: its success closes the circuit, its failure reopens it.
    HalfOpen,
}

impl CircuitState {
    /// The gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Counts consecutive failures and decides when to send.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: CircuitSettings,
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: CircuitSettings) -> Self {
        Self {
            settings,
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        match (self.open_until, self.probing) {
            (_, true) => CircuitState::HalfOpen,
            (Some(_), false) => CircuitState::Open,
            (None, false) => CircuitState::Closed,
        }
    }

    /// How long to wait before the next attempt may be sent; zero when it may go now. Once an
    /// open circuit's wait is over the circuit turns half-open and this attempt is the probe.
    pub fn wait(&mut self, now: Instant) -> Duration {
        match self.open_until {
            Some(until) if now < until => until - now,
            Some(_) => {
                self.open_until = None;
                self.probing = true;
                Duration::ZERO
            }
            None => Duration::ZERO,
        }
    }

    /// An attempt made progress: the circuit closes. Returns whether it had been open.
    pub fn success(&mut self) -> bool {
        let was_open = self.probing || self.open_until.is_some();
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
        was_open
    }

    /// An attempt failed. Returns whether this failure opened the circuit (a failed probe
    /// reopens it for another full wait).
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.probing || self.failures >= self.settings.failure_threshold {
            let opened = self.open_until.is_none();
            self.probing = false;
            self.open_until = Some(now + self.settings.open_for);
            return opened;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(CircuitSettings {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_wait() {
        let mut b = breaker();
        let t0 = Instant::now();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.failure(t0), "the third failure opens it");
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.wait(t0 + Duration::from_secs(4)), Duration::from_secs(6));
        assert_eq!(b.wait(t0 + Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.success(), "the probe's success closes an open circuit");
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_wait() {
        let mut b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.wait(t1), Duration::ZERO);
        assert!(b.failure(t1), "the failed probe reopens it");
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.wait(t1), Duration::from_secs(10));
    }

    #[test]
    fn success_resets_the_count() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.failure(t0);
        b.failure(t0);
        assert!(!b.success(), "it was never open");
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
