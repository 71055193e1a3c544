//! Raft storage tests: what the state file may claim, directories and state that survive a power cut, and
//! a cut under a live reader.

use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::BatchBuilder;
use raft::eraftpb::{Entry, HardState};

use super::state::RaftState;
use super::ReplicaStorage;
use crate::storage::{Disk, Faults, FaultyDisk, LogConfig, OsDisk};

fn entry(index: u64, term: u64) -> Entry {
    let mut b = BatchBuilder::new(1);
    b.push(1, None, format!("v{index}").as_bytes(), &[]);
    Entry {
        index,
        term,
        data: b.finish(),
        ..Default::default()
    }
}

/// Opens the storage of a one-replica group in `dir`.
fn open(disk: Arc<dyn Disk>, dir: &std::path::Path) -> ReplicaStorage {
    let clock = Arc::new(crate::storage::SystemClock);
    ReplicaStorage::open(disk, clock, dir, LogConfig::default(), &[1])
        .unwrap()
        .0
}

/// Appends entries `from..=to` of `term` and makes them durable, as the driver does.
fn append(s: &ReplicaStorage, from: u64, to: u64, term: u64) {
    let entries: Vec<Entry> = (from..=to).map(|i| entry(i, term)).collect();
    let mut core = s.write();
    let (file, _) = core.append_entries(&entries, true).unwrap();
    file.unwrap().sync_data().unwrap();
    core.mark_durable(to).unwrap();
}

#[test]
fn the_persisted_commit_never_passes_what_was_applied() {
    // M1 in the durability audit: a commit written with a term change covered a conf change not applied
    // yet; a restart (applied = persisted commit) then skipped applying it for good.
    let dir = tempfile::tempdir().unwrap();
    let s = open(Arc::new(OsDisk), dir.path());
    append(&s, 1, 12, 1);
    s.write().set_applied(8);
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 12,
        ..Default::default()
    };
    s.write().set_hard_state(&hs).unwrap();
    let state = RaftState::read(&OsDisk, dir.path()).unwrap().unwrap();
    assert_eq!(state.hard_state.term, 2);
    assert_eq!(state.hard_state.commit, 8, "only what was applied");
    s.write().set_applied(12);
    s.write().close().unwrap();
    let state = RaftState::read(&OsDisk, dir.path()).unwrap().unwrap();
    assert_eq!(state.hard_state.commit, 12);
}

#[test]
fn a_new_partition_directory_and_its_term_and_vote_survive_a_power_cut() {
    // M5: the entry of a new directory in its parent is durable only once the parent is fsynced; and the
    // state file is replaced by rename, durable only with its directory (both modelled by FaultyDisk).
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("topics").join("00000001-t").join("0");
    let faults = Faults::new();
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults.clone(),
    });
    let s = open(disk.clone(), &dir);
    append(&s, 1, 3, 1);
    let hs = HardState {
        term: 5,
        vote: 2,
        commit: 3,
        ..Default::default()
    };
    s.write().set_applied(3);
    s.write().set_hard_state(&hs).unwrap();
    drop(s);
    faults.power_cut(|durable, _| durable).unwrap();
    assert!(dir.exists(), "the partition directory survived");
    let s = open(disk, &dir);
    let core = s.read();
    assert_eq!(
        (core.state().hard_state.term, core.state().hard_state.vote),
        (5, 2)
    );
    assert_eq!(
        core.log.last_raft_index(),
        3,
        "the fsynced entries survived"
    );
}

#[test]
fn a_cut_under_a_live_reader_is_an_error_not_a_crash() {
    // H6: repairing a stopped leader cut its files while readers still held the old log; through a map
    // that was a SIGBUS. Reads are positioned reads into buffers now: the old reader gets an error.
    let dir = tempfile::tempdir().unwrap();
    let a = open(Arc::new(OsDisk), dir.path());
    append(&a, 1, 40, 1);
    let held: Vec<Bytes> = a.read().log.read(0, 1 << 20, u64::MAX).unwrap();
    let b = open(Arc::new(OsDisk), dir.path());
    b.write().cut_for_repair(5).unwrap();
    // Slices handed out before are buffers of their own: still whole.
    for bytes in &held {
        ferry_protocol::batch::validate_stored(bytes).unwrap();
    }
    // The old log believes it is longer than the file: reading past the cut is an error.
    let late = a.read().log.read(30, 1 << 20, u64::MAX);
    assert!(late.is_err_and(|e| e.is_damage()));
}

#[test]
fn a_follower_applies_from_its_copy_and_forgets_it_once_applied() {
    // Issue 13: a follower read every committed entry back from its log to apply it (a positioned read, a
    // fresh buffer and a CRC pass per entry). It keeps a copy of each entry until applied now: with the log's
    // file unreadable, applying still gets every entry, and none of them aliases the received buffer (a
    // cached slice would pin the network receive buffer it came in).
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let disk: Arc<dyn Disk> = Arc::new(FaultyDisk {
        faults: faults.clone(),
    });
    let s = open(disk, dir.path());
    let received: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
    {
        let mut core = s.write();
        let (file, _) = core.append_entries(&received, false).unwrap();
        file.unwrap().sync_data().unwrap();
        core.mark_durable(10).unwrap();
    }
    for f in walk(dir.path()) {
        faults.make_unreadable(&f, 0..u64::MAX);
    }
    let ctx = raft::GetEntriesContext::empty(false);
    let got = raft::Storage::entries(&s, 1, 11, None, ctx).expect("served from the copies");
    assert_eq!(got.len(), 10);
    for (g, r) in got.iter().zip(&received) {
        assert_eq!((g.index, g.term, &g.data), (r.index, r.term, &r.data));
        assert_ne!(g.data.as_ptr(), r.data.as_ptr(), "a copy, not a slice");
    }
    // Applied entries are dropped: later reads of them go to the log (here: unreadable).
    s.write().set_applied(6);
    let ctx = raft::GetEntriesContext::empty(false);
    assert_eq!(
        raft::Storage::entries(&s, 7, 11, None, ctx).unwrap().len(),
        4
    );
    let ctx = raft::GetEntriesContext::empty(false);
    assert!(raft::Storage::entries(&s, 6, 11, None, ctx).is_err());
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_cache_stays_the_logs_suffix_across_a_replaced_tail_and_a_leadership_flip() {
    // The follower's copies and the leader's entries share one cache, which must always be a contiguous
    // suffix of the log: a follower whose unapplied tail is replaced, then elected, then following again.
    let dir = tempfile::tempdir().unwrap();
    let s = open(Arc::new(OsDisk), dir.path());
    let write = |entries: Vec<Entry>, leading: bool| {
        let last = entries.last().unwrap().index;
        let mut core = s.write();
        let (file, _) = core.append_entries(&entries, leading).unwrap();
        file.unwrap().sync_data().unwrap();
        core.mark_durable(last).unwrap();
    };
    let check = |low: u64, terms: &[u64]| {
        let ctx = raft::GetEntriesContext::empty(false);
        let high = low + terms.len() as u64;
        let got = raft::Storage::entries(&s, low, high, None, ctx).unwrap();
        let got: Vec<(u64, u64)> = got.iter().map(|e| (e.index, e.term)).collect();
        let want: Vec<(u64, u64)> = (low..high).zip(terms.iter().copied()).collect();
        assert_eq!(got, want);
        for (i, t) in want {
            assert_eq!(raft::Storage::term(&s, i).unwrap(), t);
        }
    };
    // Following: 1..=6 of term 1, 1..=3 applied.
    write((1..=6).map(|i| entry(i, 1)).collect(), false);
    s.write().set_applied(3);
    check(4, &[1, 1, 1]);
    // A new leader of term 2 replaces 5..=6.
    write((5..=7).map(|i| entry(i, 2)).collect(), false);
    check(4, &[1, 2, 2, 2]);
    // Elected in term 3: leader entries follow the copies.
    write((8..=9).map(|i| entry(i, 3)).collect(), true);
    check(4, &[1, 2, 2, 2, 3, 3]);
    s.write().set_applied(9);
    check(1, &[1, 1, 1, 1, 2, 2, 2, 3, 3]);
    // Following again in term 4 (what is applied is never replaced): the leader's entries stay until
    // applied, then only the follower's unapplied copies are cached.
    write((10..=11).map(|i| entry(i, 4)).collect(), false);
    s.write().set_applied(10);
    check(9, &[3, 4, 4]);
    check(1, &[1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4]);
}
