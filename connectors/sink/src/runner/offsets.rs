//! Which input offsets a sink may commit. A record is open from when the loop takes it until
//! every delivery made from it has an outcome; a partition's committable offset is the one
//! below its oldest open record, so a crash redelivers every record not settled and none
//! that was. Pure bookkeeping, no client: the loop stores what [`OpenRecords::committable`]
//! says and reports back with [`OpenRecords::stored`].

use std::collections::BTreeMap;

/// The records of each input partition that are taken in and not settled, with what the loop
/// keeps of each (`T`) until then.
#[derive(Debug)]
pub(super) struct OpenRecords<T> {
    partitions: BTreeMap<i32, Partition<T>>,
}

#[derive(Debug)]
struct Partition<T> {
    /// By offset: the record and how many settlements it still waits for.
    open: BTreeMap<i64, (T, usize)>,
    /// The highest offset taken in.
    highest: Option<i64>,
    /// The offset last stored for commit.
    stored: Option<i64>,
}

impl<T> Default for Partition<T> {
    fn default() -> Self {
        Self {
            open: BTreeMap::new(),
            highest: None,
            stored: None,
        }
    }
}

impl<T> Default for OpenRecords<T> {
    fn default() -> Self {
        Self {
            partitions: BTreeMap::new(),
        }
    }
}

impl<T> OpenRecords<T> {
    /// Takes in the record at `offset`, open until `outstanding` settlements; with none it is
    /// settled on arrival.
    pub(super) fn take(&mut self, partition: i32, offset: i64, record: T, outstanding: usize) {
        let track = self.partitions.entry(partition).or_default();
        track.highest = Some(track.highest.map_or(offset, |h| h.max(offset)));
        if outstanding > 0 {
            track.open.insert(offset, (record, outstanding));
        }
    }

    /// The open record at `offset`.
    pub(super) fn get(&self, partition: i32, offset: i64) -> Option<&T> {
        let track = self.partitions.get(&partition)?;
        track.open.get(&offset).map(|(record, _)| record)
    }

    /// Settles one of the record's outstanding shares; returns the record once it has none
    /// left. A record not open (revoked meanwhile, or settled) is ignored.
    pub(super) fn settle(&mut self, partition: i32, offset: i64) -> Option<T> {
        let track = self.partitions.get_mut(&partition)?;
        let (_, outstanding) = track.open.get_mut(&offset)?;
        *outstanding = outstanding.saturating_sub(1);
        if *outstanding > 0 {
            return None;
        }
        track.open.remove(&offset).map(|(record, _)| record)
    }

    /// The offset of `partition` that became committable since the last one stored: the one
    /// below its oldest open record, or the highest taken in when none is open.
    pub(super) fn committable(&self, partition: i32) -> Option<i64> {
        let track = self.partitions.get(&partition)?;
        let settled = match track.open.keys().next() {
            Some(first_open) => first_open - 1,
            None => track.highest?,
        };
        (settled >= 0 && track.stored.is_none_or(|stored| stored < settled)).then_some(settled)
    }

    /// Notes that `offset` was stored for `partition`.
    pub(super) fn stored(&mut self, partition: i32, offset: i64) {
        if let Some(track) = self.partitions.get_mut(&partition) {
            track.stored = Some(offset);
        }
    }

    /// Forgets revoked partitions: their open records go to the next owner.
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_commits_up_to_its_oldest_open_record() {
        let mut open = OpenRecords::default();
        open.take(0, 10, "a", 1);
        open.take(0, 11, "b", 2);
        open.take(0, 12, "c", 1);
        assert_eq!(open.committable(0), Some(9));
        // Settled out of order: nothing moves until the oldest is settled.
        assert_eq!(open.settle(0, 12), Some("c"));
        assert_eq!(open.committable(0), Some(9));
        assert_eq!(open.settle(0, 10), Some("a"));
        assert_eq!(open.committable(0), Some(10));
        // Two deliveries made from 11: open until both are settled.
        assert_eq!(open.settle(0, 11), None);
        assert_eq!(open.get(0, 11), Some(&"b"));
        assert_eq!(open.committable(0), Some(10));
        assert_eq!(open.settle(0, 11), Some("b"));
        assert_eq!(open.committable(0), Some(12));
    }

    #[test]
    fn what_was_stored_is_not_committable_again() {
        let mut open = OpenRecords::default();
        open.take(3, 0, (), 0);
        assert_eq!(open.committable(3), Some(0));
        open.stored(3, 0);
        assert_eq!(open.committable(3), None);
        open.take(3, 1, (), 1);
        assert_eq!(open.committable(3), None, "offset 1 is open");
        open.settle(3, 1);
        assert_eq!(open.committable(3), Some(1));
    }

    #[test]
    fn the_first_record_open_commits_nothing() {
        let mut open = OpenRecords::default();
        open.take(0, 0, (), 1);
        assert_eq!(open.committable(0), None);
        assert_eq!(open.committable(7), None, "a partition never taken from");
    }

    #[test]
    fn a_revoked_partition_is_forgotten_and_late_settlements_ignored() {
        let mut open = OpenRecords::default();
        open.take(1, 5, "x", 1);
        open.take(2, 5, "y", 1);
        open.forget(&[1]);
        assert_eq!(open.settle(1, 5), None);
        assert_eq!(open.get(1, 5), None);
        assert_eq!(open.committable(1), None);
        assert_eq!(open.settle(2, 5), Some("y"));
        assert_eq!(open.settle(2, 5), None, "settled twice counts once");
    }
}
