//! How far each partition's charges have been read, so that a period closes only once the
//! charges that reached the broker before its close are booked, however long the processor was
//! away. A charge is late by when it was written to the broker (its record timestamp), not by
//! when this processor got to it: after an outage longer than the grace, the backlog is read
//! into its own periods before they close, not into the next ones as corrections.
//!
//! A partition is read up to an instant when it has read a charge stamped then or later, or
//! when no charge came in for a whole check interval (it is idle, so nothing earlier waits). The
//! first check after the partition was taken counts no idle interval: the consumer may not have
//! fetched yet. This is memory of this instance only; a restart starts each partition anew.

use std::collections::HashMap;

/// What the processor has seen of one partition's charges.
#[derive(Debug, Clone, Copy)]
struct Partition {
    /// The latest record timestamp read (µs).
    latest: i64,
    /// Whether no charge was read since the last check.
    idle: bool,
}

impl Default for Partition {
    fn default() -> Self {
        Self {
            latest: i64::MIN,
            idle: false,
        }
    }
}

/// Per partition number.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reading(HashMap<i32, Partition>);

impl Reading {
    /// A charge of `partition` stamped `at` (µs) was read.
    pub(crate) fn read(&mut self, partition: i32, at: i64) {
        let seen = self.0.entry(partition).or_default();
        seen.latest = seen.latest.max(at);
        seen.idle = false;
    }

    /// At a close check of `partition` at `now` (µs): the instant up to which its charges are
    /// read. `first` says the partition was just taken. The next interval starts idle.
    pub(crate) fn check(&mut self, partition: i32, first: bool, now: i64) -> i64 {
        let seen = self.0.entry(partition).or_default();
        let read_to = if seen.idle && !first {
            now
        } else {
            seen.latest.min(now)
        };
        seen.idle = true;
        read_to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_read_to_its_latest_stamp_while_charges_come_and_to_now_once_idle() {
        let mut reading = Reading::default();
        let now = 1_000_000;
        assert_eq!(
            reading.check(0, true, now),
            i64::MIN,
            "just taken: nothing is known read"
        );
        // A backlog stamped long ago is being read.
        reading.read(0, 10);
        reading.read(0, 30);
        reading.read(0, 20);
        assert_eq!(reading.check(0, false, now), 30);
        reading.read(0, 40);
        assert_eq!(reading.check(0, false, now + 1), 40);
        // No charge for a whole interval: read to now.
        assert_eq!(reading.check(0, false, now + 2), now + 2);
        // A charge stamped ahead of this host's clock says no more than now.
        reading.read(0, now + 500);
        assert_eq!(reading.check(0, false, now + 3), now + 3);
        // The first check after the partition was taken counts no idle interval.
        reading.read(2, 50);
        assert_eq!(reading.check(2, true, now), 50);
        assert_eq!(reading.check(2, true, now), 50);
        assert_eq!(reading.check(2, false, now), now);
        // Partitions are apart.
        assert_eq!(reading.check(1, true, now), i64::MIN);
        assert_eq!(reading.check(1, false, now), now);
    }
}
