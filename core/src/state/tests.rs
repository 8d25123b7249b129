//! How a partition's inputs take their changelog turns: who waits, who flushes for whom.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Ownership;
use crate::changelog::{ChangelogWrite, Heard, Turn};
use crate::processor::OutputRecord;

fn write(key: &str, value: &str) -> ChangelogWrite {
    ChangelogWrite {
        topic: "group.changelog".to_owned(),
        partition: 0,
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
        ends_input: true,
    }
}

/// The writes `turn` flushes, once acknowledged.
fn flushed(ownership: &Ownership, turn: Turn) -> Vec<(String, String, bool)> {
    let Turn::Flush(flush) = turn else {
        panic!("expected a flush");
    };
    let writes = flush
        .writes
        .iter()
        .map(|w| {
            (
                String::from_utf8_lossy(&w.key).into_owned(),
                String::from_utf8_lossy(w.value.as_deref().unwrap_or_default()).into_owned(),
                w.ends_input,
            )
        })
        .collect();
    flush.done(&Ok(()));
    ownership.flushed();
    writes
}

#[tokio::test]
async fn inputs_wait_while_more_of_their_partition_are_behind_and_the_last_flushes_each_key_once() {
    let ownership = Arc::new(Ownership::default());
    let _guards = [ownership.track(), ownership.track(), ownership.track()];
    let Turn::Wait { flushed: first, .. } =
        ownership.changelog_turn(vec![write("a", "1"), write("b", "1")], Vec::new())
    else {
        panic!("the first of three waits");
    };
    let Turn::Wait {
        flushed: second, ..
    } = ownership.changelog_turn(Vec::new(), Vec::new())
    else {
        panic!("an input without writes joins the batch before it");
    };
    let third = ownership.changelog_turn(vec![write("a", "2")], Vec::new());
    assert_eq!(
        flushed(&ownership, third),
        [
            ("a".to_owned(), "2".to_owned(), false),
            ("b".to_owned(), "1".to_owned(), true),
        ],
        "each key once at its newest value, the last write ending the batch"
    );
    assert!(first.await.expect("heard").is_ok());
    assert!(second.await.expect("heard").is_ok());
}

#[test]
fn an_input_after_a_flush_does_not_wait_for_the_inputs_that_flush_released() {
    let ownership = Arc::new(Ownership::default());
    // The released inputs still hold their guards: they have not run since they were told.
    let _released = [ownership.track(), ownership.track()];
    assert!(matches!(
        ownership.changelog_turn(vec![write("a", "1")], Vec::new()),
        Turn::Wait { .. }
    ));
    flushed(
        &ownership,
        ownership.changelog_turn(vec![write("a", "2")], Vec::new()),
    );
    let _next = ownership.track();
    assert!(
        matches!(
            ownership.changelog_turn(vec![write("a", "3")], Vec::new()),
            Turn::Flush(_)
        ),
        "nothing is behind it: it must flush, or it waits for ever"
    );
}

#[test]
fn an_input_alone_with_nothing_to_write_is_free() {
    let ownership = Arc::new(Ownership::default());
    let _guard = ownership.track();
    assert!(matches!(
        ownership.changelog_turn(Vec::new(), Vec::new()),
        Turn::Free
    ));
}

#[tokio::test]
async fn a_revoked_partition_drops_its_batch_and_lets_those_waiting_go() {
    let ownership = Arc::new(Ownership::default());
    let _guards = [ownership.track(), ownership.track()];
    let Turn::Wait { flushed: first, .. } =
        ownership.changelog_turn(vec![write("a", "1")], Vec::new())
    else {
        panic!("the first of two waits");
    };
    ownership.revoked.store(true, Ordering::SeqCst);
    assert!(matches!(
        ownership.changelog_turn(vec![write("a", "2")], Vec::new()),
        Turn::Free
    ));
    assert!(first.await.expect("heard").is_ok());
    assert!(
        ownership.diverged.load(Ordering::SeqCst),
        "local state holds writes its changelog never got"
    );
}

fn table(key: &str, value: &str) -> OutputRecord {
    OutputRecord {
        topic: "usage.window-aggregates".to_owned(),
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
    }
}

#[tokio::test]
async fn table_outputs_wait_with_the_batch_and_go_out_once_per_key_at_its_newest() {
    let ownership = Arc::new(Ownership::default());
    let _guards = [ownership.track(), ownership.track(), ownership.track()];
    let Turn::Wait { flushed: first, .. } =
        ownership.changelog_turn(Vec::new(), vec![table("w-1", "1"), table("w-2", "1")])
    else {
        panic!("an input with table outputs alone waits for those behind it");
    };
    let Turn::Wait {
        flushed: second, ..
    } = ownership.changelog_turn(vec![write("a", "1")], vec![table("w-1", "2")])
    else {
        panic!("the second of three waits");
    };
    let Turn::Flush(flush) = ownership.changelog_turn(Vec::new(), vec![table("w-1", "3")]) else {
        panic!("the last flushes");
    };
    let written: Vec<(String, String)> = flush
        .table
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        written,
        [
            ("w-1".to_owned(), "3".to_owned()),
            ("w-2".to_owned(), "1".to_owned()),
        ],
        "each key once, at its newest value, in the order keys first came"
    );
    assert_eq!(flush.writes.len(), 1, "the changelog write goes with them");
    flush.done(&Ok(()));
    assert!(first.await.expect("heard").is_ok());
    assert!(second.await.expect("heard").is_ok());
}

#[tokio::test]
async fn inputs_arriving_while_a_flush_is_on_its_way_make_the_next_and_the_last_produces_it() {
    let ownership = Arc::new(Ownership::default());
    let _first = ownership.track();
    let Turn::Flush(on_its_way) = ownership.changelog_turn(vec![write("a", "1")], Vec::new())
    else {
        panic!("alone, the first flushes");
    };
    // Nothing is behind the next two when they take their turns, but the flush is not
    // acknowledged yet: they wait for it and gather.
    let _second = ownership.track();
    let Turn::Wait {
        flushed: second, ..
    } = ownership.changelog_turn(vec![write("a", "2")], Vec::new())
    else {
        panic!("the second waits for the flush on its way");
    };
    let _third = ownership.track();
    let Turn::Wait { flushed: third, .. } =
        ownership.changelog_turn(vec![write("a", "3"), write("b", "1")], Vec::new())
    else {
        panic!("so does the third");
    };
    on_its_way.done(&Ok(()));
    ownership.flushed();
    assert!(
        matches!(third.await.expect("heard"), Ok(Heard::FlushNow)),
        "the last gathered produces the next batch"
    );
    let next = ownership.take_flush().expect("the partition is held");
    let written: Vec<(String, String)> = next
        .writes
        .iter()
        .map(|w| {
            (
                String::from_utf8_lossy(&w.key).into_owned(),
                String::from_utf8_lossy(w.value.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        written,
        [
            ("a".to_owned(), "3".to_owned()),
            ("b".to_owned(), "1".to_owned()),
        ]
    );
    next.done(&Ok(()));
    assert!(matches!(second.await.expect("heard"), Ok(Heard::Done)));
    ownership.flushed();
    let _fourth = ownership.track();
    assert!(
        matches!(
            ownership.changelog_turn(vec![write("a", "4")], Vec::new()),
            Turn::Flush(_)
        ),
        "with nothing on its way, an input alone flushes"
    );
}
