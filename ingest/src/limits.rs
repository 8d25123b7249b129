//! Per-key admission: a token bucket of events (the rate, with a burst) and a count of events
//! per UTC day (the quota). Both are kept in this process's memory: a restart refills the
//! bucket and forgets the day's count, and two gateways each admit the full rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the gateway allows a key by default.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// Events per second, refilled continuously.
    pub rate_per_second: f64,
    /// Events the bucket holds when full.
    pub burst: u64,
    /// Events per UTC day.
    pub daily_quota: u64,
}

/// Why events were not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The rate: try again after this long.
    Rate(Duration),
    /// The day's quota: try again after the day ends, this long from now.
    Quota(Duration),
}

struct Usage {
    tokens: f64,
    refilled: Instant,
    day: i64,
    used_today: u64,
}

/// Every key's bucket and day count.
#[derive(Default)]
pub struct Admission {
    usage: Mutex<HashMap<String, Usage>>,
}

const DAY_SECS: i64 = 86_400;

impl Admission {
    /// Takes `events` from `key`'s bucket and quota, both or neither. `now_secs` is the wall
    /// clock (for the day), `now` the monotonic one (for the rate).
    pub fn admit(
        &self,
        key: &str,
        events: u64,
        allowance: Allowance,
        now: Instant,
        now_secs: i64,
    ) -> Result<(), Throttled> {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let burst = allowance.burst as f64;
        let entry = usage.entry(key.to_owned()).or_insert_with(|| Usage {
            tokens: burst,
            refilled: now,
            day: now_secs.div_euclid(DAY_SECS),
            used_today: 0,
        });
        let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * allowance.rate_per_second).min(burst);
        entry.refilled = now;
        let today = now_secs.div_euclid(DAY_SECS);
        if entry.day != today {
            entry.day = today;
            entry.used_today = 0;
        }
        if entry.used_today.saturating_add(events) > allowance.daily_quota {
            let next_day = (today + 1) * DAY_SECS;
            let wait = u64::try_from(next_day - now_secs).unwrap_or(1);
            return Err(Throttled::Quota(Duration::from_secs(wait)));
        }
        let wanted = events as f64;
        if entry.tokens < wanted {
            let missing = wanted - entry.tokens;
            let wait = missing / allowance.rate_per_second;
            return Err(Throttled::Rate(Duration::from_secs_f64(wait.max(0.001))));
        }
        entry.tokens -= wanted;
        entry.used_today += events;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWANCE: Allowance = Allowance {
        rate_per_second: 10.0,
        burst: 20,
        daily_quota: 50,
    };

    #[test]
    fn the_burst_is_spent_then_the_rate_refills_it() {
        let admission = Admission::default();
        let start = Instant::now();
        assert_eq!(admission.admit("k", 20, ALLOWANCE, start, 0), Ok(()));
        let Err(Throttled::Rate(wait)) = admission.admit("k", 5, ALLOWANCE, start, 0) else {
            panic!("the bucket is empty");
        };
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        let later = start + Duration::from_millis(500);
        assert_eq!(admission.admit("k", 5, ALLOWANCE, later, 0), Ok(()));
        assert_eq!(
            admission.admit("other", 20, ALLOWANCE, start, 0),
            Ok(()),
            "each key has its own bucket"
        );
    }

    #[test]
    fn the_quota_holds_for_the_day_and_a_refusal_takes_nothing() {
        let admission = Admission::default();
        let mut now = Instant::now();
        let noon = 10 * DAY_SECS + DAY_SECS / 2;
        for _ in 0..5 {
            now += Duration::from_secs(10);
            assert_eq!(admission.admit("k", 10, ALLOWANCE, now, noon), Ok(()));
        }
        now += Duration::from_secs(10);
        assert_eq!(
            admission.admit("k", 1, ALLOWANCE, now, noon),
            Err(Throttled::Quota(Duration::from_secs(DAY_SECS as u64 / 2)))
        );
        assert_eq!(
            admission.admit("k", 1, ALLOWANCE, now, 11 * DAY_SECS),
            Ok(())
        );
    }
}
