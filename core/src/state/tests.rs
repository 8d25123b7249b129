//! How a partition's inputs take their changelog turns: who waits, who flushes for whom.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Ownership;
use crate::changelog::{ChangelogWrite, Turn};

fn write(key: &str, value: &str) -> ChangelogWrite {
    ChangelogWrite {
        topic: "group.changelog".to_owned(),
        partition: 0,
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
        ends_input: true,
    }
}

fn flushed(turn: Turn) -> Vec<(String, String, bool)> {
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
    writes
}

#[tokio::test]
async fn inputs_wait_while_more_of_their_partition_are_behind_and_the_last_flushes_each_key_once() {
    let ownership = Arc::new(Ownership::default());
    let _guards = [ownership.track(), ownership.track(), ownership.track()];
    let Turn::Wait { flushed: first, .. } =
        ownership.changelog_turn(vec![write("a", "1"), write("b", "1")])
    else {
        panic!("the first of three waits");
    };
    let Turn::Wait {
        flushed: second, ..
    } = ownership.changelog_turn(Vec::new())
    else {
        panic!("an input without writes joins the batch before it");
    };
    let third = ownership.changelog_turn(vec![write("a", "2")]);
    assert_eq!(
        flushed(third),
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
        ownership.changelog_turn(vec![write("a", "1")]),
        Turn::Wait { .. }
    ));
    flushed(ownership.changelog_turn(vec![write("a", "2")]));
    let _next = ownership.track();
    assert!(
        matches!(
            ownership.changelog_turn(vec![write("a", "3")]),
            Turn::Flush(_)
        ),
        "nothing is behind it: it must flush, or it waits for ever"
    );
}

#[test]
fn an_input_alone_with_nothing_to_write_is_free() {
    let ownership = Arc::new(Ownership::default());
    let _guard = ownership.track();
    assert!(matches!(ownership.changelog_turn(Vec::new()), Turn::Free));
}

#[tokio::test]
async fn a_revoked_partition_drops_its_batch_and_lets_those_waiting_go() {
    let ownership = Arc::new(Ownership::default());
    let _guards = [ownership.track(), ownership.track()];
    let Turn::Wait { flushed: first, .. } = ownership.changelog_turn(vec![write("a", "1")]) else {
        panic!("the first of two waits");
    };
    ownership.revoked.store(true, Ordering::SeqCst);
    assert!(matches!(
        ownership.changelog_turn(vec![write("a", "2")]),
        Turn::Free
    ));
    assert!(first.await.expect("heard").is_ok());
    assert!(
        ownership.diverged.load(Ordering::SeqCst),
        "local state holds writes its changelog never got"
    );
}
