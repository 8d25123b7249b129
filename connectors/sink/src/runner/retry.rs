//! Deliveries waiting for their next attempt. A delivery the destination did not take waits
//! here through its backoff while the sink goes on with the records after it; its sources stay
//! open meanwhile, so no offset at or past them is committed until it settles.
//!
//! Deliveries of one ordering key (`Delivery::ordering_key`: its subject, or else its key)
//! keep their order: only the oldest of a key is ever sent, and a newer one waits behind it
//! until it settles (the ledger then answers the newer one if it is the same delivery again).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use crate::Delivery;

/// The deliveries waiting, in the order they first arrived.
#[derive(Debug)]
pub(super) struct Retrying<P> {
    /// By arrival: the delivery and when it may go again.
    waiting: BTreeMap<u64, (Delivery<P>, Instant)>,
    /// How many deliveries of each ordering key wait.
    keys: HashMap<String, usize>,
    /// Arrival number of the delivery that arrives next.
    next: u64,
    /// [`Retrying::next_due`], kept until the next change: the loop asks for it per record.
    next_due: Cell<Option<Option<Instant>>>,
}

impl<P> Default for Retrying<P> {
    fn default() -> Self {
        Self {
            waiting: BTreeMap::new(),
            keys: HashMap::new(),
            next: 0,
            next_due: Cell::new(None),
        }
    }
}

/// A delivery taken out to be sent, with its place among the waiting ones, so that it goes
/// back to that place if it must wait again.
#[derive(Debug)]
pub(super) struct Sending<P> {
    pub delivery: Delivery<P>,
    arrival: Option<u64>,
}

impl<P> Sending<P> {
    /// A delivery sent for the first time.
    pub fn new(delivery: Delivery<P>) -> Self {
        Self {
            delivery,
            arrival: None,
        }
    }
}

impl<P> Retrying<P> {
    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether a delivery of ordering key `key` is waiting.
    pub fn holds(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Puts `sending` (back) to wait until `due`, at its first place if it had one.
    pub fn wait(&mut self, sending: Sending<P>, due: Instant) {
        let arrival = sending.arrival.unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.next_due.set(None);
        *self
            .keys
            .entry(sending.delivery.ordering_key().to_owned())
            .or_default() += 1;
        self.waiting.insert(arrival, (sending.delivery, due));
    }

    /// When the next delivery that may be sent is due: the earliest due time among the oldest
    /// delivery of each key.
    pub fn next_due(&self) -> Option<Instant> {
        if let Some(known) = self.next_due.get() {
            return known;
        }
        let due = self.first_of_each_key().map(|(_, due)| due).min();
        self.next_due.set(Some(due));
        due
    }

    /// Takes out the deliveries due by `now`, oldest first, at most one per key.
    pub fn take_due(&mut self, now: Instant) -> Vec<Sending<P>> {
        let due: Vec<u64> = self
            .first_of_each_key()
            .filter(|(_, due)| *due <= now)
            .map(|(arrival, _)| arrival)
            .collect();
        due.into_iter()
            .filter_map(|arrival| {
                let (delivery, _) = self.waiting.remove(&arrival)?;
                self.let_go(delivery.ordering_key());
                Some(Sending {
                    delivery,
                    arrival: Some(arrival),
                })
            })
            .collect()
    }

    /// Drops the deliveries of revoked partitions: their records go to the next owner.
    pub fn forget(&mut self, revoked: &[i32]) {
        let (kept, gone): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, (delivery, _))| {
                delivery
                    .sources
                    .iter()
                    .all(|s| !revoked.contains(&s.partition))
            });
        self.waiting = kept;
        for (_, (delivery, _)) in gone {
            self.let_go(delivery.ordering_key());
        }
    }

    fn let_go(&mut self, key: &str) {
        self.next_due.set(None);
        if let Some(count) = self.keys.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.keys.remove(key);
            }
        }
    }

    fn first_of_each_key(&self) -> impl Iterator<Item = (u64, Instant)> + '_ {
        let mut seen = HashSet::new();
        self.waiting
            .iter()
            .filter(move |(_, (delivery, _))| seen.insert(delivery.ordering_key()))
            .map(|(arrival, (_, due))| (*arrival, *due))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Source;

    fn delivery(key: &str, partition: i32) -> Delivery<()> {
        let mut delivery = Delivery::new(key, "t1", ());
        delivery.sources.push(Source {
            partition,
            offset: 0,
            money: None,
        });
        delivery
    }

    fn keys(sending: &[Sending<()>]) -> Vec<&str> {
        sending.iter().map(|s| s.delivery.key.as_str()).collect()
    }

    #[test]
    fn a_delivery_goes_again_once_due_and_not_before() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        let mut retrying = Retrying::default();
        retrying.wait(Sending::new(delivery("a", 0)), later);
        retrying.wait(Sending::new(delivery("b", 0)), now);
        assert_eq!(retrying.next_due(), Some(now));
        assert_eq!(keys(&retrying.take_due(now)), ["b"]);
        assert_eq!(retrying.next_due(), Some(later));
        assert!(retrying.take_due(now).is_empty());
        assert_eq!(keys(&retrying.take_due(later)), ["a"]);
        assert!(retrying.is_empty());
        assert_eq!(retrying.next_due(), None);
    }

    #[test]
    fn a_newer_delivery_of_a_key_waits_behind_the_older_even_when_that_one_waits_again() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut retrying = Retrying::default();
        retrying.wait(Sending::new(delivery("k", 0)), now);
        // The same key again, ready at once: it still waits for the older one.
        retrying.wait(Sending::new(delivery("k", 0)), now);
        retrying.wait(Sending::new(delivery("other", 0)), now);
        assert!(retrying.holds("k"));
        let sent = retrying.take_due(now);
        assert_eq!(keys(&sent), ["k", "other"]);
        // The older one is refused again: it goes back in front of the newer one.
        let older = sent.into_iter().next().expect("k");
        retrying.wait(older, later);
        assert_eq!(retrying.next_due(), Some(later), "the newer k waits behind");
        assert!(retrying.take_due(now).is_empty());
        assert_eq!(keys(&retrying.take_due(later)), ["k"]);
        assert_eq!(retrying.len(), 1);
        assert_eq!(keys(&retrying.take_due(later)), ["k"]);
        assert!(retrying.is_empty());
    }

    #[test]
    fn deliveries_of_one_subject_keep_their_order_whatever_their_keys() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let mut retrying = Retrying::default();
        retrying.wait(
            Sending::new(delivery("ord-1:1:provision", 0).about("ord-1")),
            later,
        );
        retrying.wait(
            Sending::new(delivery("ord-1:1:revoke", 0).about("ord-1")),
            now,
        );
        retrying.wait(
            Sending::new(delivery("ord-2:1:provision", 0).about("ord-2")),
            now,
        );
        assert!(retrying.holds("ord-1"));
        assert_eq!(keys(&retrying.take_due(now)), ["ord-2:1:provision"]);
        assert_eq!(keys(&retrying.take_due(later)), ["ord-1:1:provision"]);
        assert_eq!(keys(&retrying.take_due(later)), ["ord-1:1:revoke"]);
        assert!(retrying.is_empty());
    }

    #[test]
    fn a_revoked_partition_takes_its_deliveries_along() {
        let now = Instant::now();
        let mut retrying = Retrying::default();
        retrying.wait(Sending::new(delivery("a", 0)), now);
        retrying.wait(Sending::new(delivery("b", 1)), now);
        retrying.forget(&[1]);
        assert!(!retrying.holds("b"));
        assert_eq!(keys(&retrying.take_due(now)), ["a"]);
    }
}
