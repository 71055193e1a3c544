//! The replica core's fsyncs: asynchronous persistence (the next Readies written while one is out), what
//! waits for it, and a failed one. The test cluster is `tests.rs`'s.

use super::*;

#[test]
fn the_next_batches_are_written_while_an_fsync_is_out_and_answered_after_their_own() {
    // Asynchronous persistence: the core takes publishes while its fsync runs, writes them, and asks for
    // the next fsync once the first returned. Each publish is answered only after an fsync that started
    // after its write.
    let mut c = Cluster::new(&[1], FsyncPolicy::PerBatch);
    c.tick_until("a cluster of one leads", |c| c.leader() == Some(1));
    let last = |c: &mut Cluster| raft::Storage::last_index(c.node(1).core.storage()).unwrap();
    c.node(1).hold_syncs = true;
    c.node(1).trace.clear();
    c.handle(1, Event::Proposals(vec![plain("a", 1)]));
    assert_eq!(c.node(1).trace, ["sync"]);
    let first = last(&mut c);
    c.handle(1, Event::Proposals(vec![plain("b", 2), plain("c", 3)]));
    assert_eq!(
        last(&mut c),
        first + 2,
        "written while the first fsync is out"
    );
    assert_eq!(c.node(1).trace, ["sync"], "one fsync out at a time");
    assert!(c.answers(1).is_empty());
    // The first fsync returns: only what it covered is answered; the next one starts.
    let file = c.node(1).held.take().unwrap();
    file.sync_data().unwrap();
    let now = c.now;
    c.node(1).core.synced(Ok(()), now);
    c.settle(1);
    assert_eq!(c.answers(1), [(1, ack(0))]);
    assert!(c.node(1).held.is_some(), "the second fsync is out");
    assert_eq!(c.node(1).trace.iter().filter(|t| **t == "sync").count(), 2);
    c.release(1, Ok(()));
    assert_eq!(c.answers(1), [(2, ack(1)), (3, ack(2))]);
    assert_eq!(c.node(1).high_watermark, 3);
}

#[test]
fn a_follower_replaces_its_tail_only_after_the_fsync_out_returned() {
    // A cut under a running fsync would leave unclear what the fsync covered: the Ready that replaces an
    // uncommitted tail waits for it.
    let mut c = Cluster::new(&[1, 2, 3], FsyncPolicy::PerBatch);
    c.tick_until("a leader", |c| c.leader().is_some());
    let old = c.leader().unwrap();
    let f: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old).collect();
    // The old leader writes an entry nobody else gets, and its fsync stays out while it is cut off.
    c.node(f[0]).cut = true;
    c.node(f[1]).cut = true;
    c.node(old).hold_syncs = true;
    c.handle(old, Event::Proposals(vec![plain("lost", 1)]));
    assert!(c.nodes[&old].held.is_some());
    let last =
        |c: &Cluster, id: u64| raft::Storage::last_index(c.nodes[&id].core.storage()).unwrap();
    let held_last = last(&c, old);
    c.node(old).cut = true;
    c.node(f[0]).cut = false;
    c.node(f[1]).cut = false;
    let new_leader = |c: &Cluster| f.iter().copied().find(|i| c.nodes[i].leadership.serving);
    c.tick_until("a new leader", |c| new_leader(c).is_some());
    let new = new_leader(&c).unwrap();
    c.handle(new, Event::Proposals(vec![plain("kept", 2)]));
    // Back in touch, it hears the new leader's entries, which replace its tail only after the fsync.
    c.node(old).cut = false;
    for _ in 0..5 {
        c.tick();
    }
    assert_eq!(
        last(&c, old),
        held_last,
        "nothing cut while the fsync is out"
    );
    assert!(
        c.answers(old).is_empty(),
        "the lost publish is not answered yet"
    );
    c.release(old, Ok(()));
    c.tick_until("the old leader follows the new log", |c| {
        c.nodes.values().all(|n| n.high_watermark == 1)
    });
    assert!(
        matches!(
            c.answers(old).as_slice(),
            [(1, Err(ReplicaError::Dropped(_)))]
        ),
        "the replaced publish is not acknowledged"
    );
    assert!(c.nodes[&old].fenced.is_none());
}

#[test]
fn a_failed_fsync_fences_the_replica_and_answers_every_waiting_publish() {
    let mut c = Cluster::new(&[1], FsyncPolicy::PerBatch);
    c.tick_until("a cluster of one leads", |c| c.leader() == Some(1));
    c.node(1).hold_syncs = true;
    c.handle(1, Event::Proposals(vec![plain("a", 1), plain("b", 2)]));
    c.release(1, Err("fsync failed: EIO".into()));
    assert_eq!(
        c.node(1).fenced,
        Some(Fatal::Other("fsync failed: EIO".into()))
    );
    let answers = c.answers(1);
    assert_eq!(answers.len(), 2);
    for (_, a) in answers {
        assert!(
            matches!(a, Err(ReplicaError::Failed(ref w)) if w.contains("EIO")),
            "{a:?}"
        );
    }
    // Fenced: nothing more is decided.
    c.node(1).trace.clear();
    c.handle(1, Event::Proposals(vec![plain("c", 3)]));
    c.handle(1, Event::Ticks(1));
    assert!(c.node(1).trace.is_empty(), "{:?}", c.node(1).trace);
    assert!(c.node(1).core.is_fenced());
}
