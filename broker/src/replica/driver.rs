//! The replica task: the async shell around [`ReplicaCore`]. It only moves events in (proposals, peer
//! messages, ticks, operator requests) and carries actions out (sends through the transport, fsyncs on the
//! blocking pool, answers to publishers, what readers see in [`Shared`]); every decision is the core's.

use std::sync::Arc;
use std::time::Instant;

use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::core::{
    Action, Apply, Event, Fatal, ReplicaConfig, ReplicaCore, MESSAGES_PER_STEP_MAX,
    PROPOSALS_PER_STEP_MAX,
};
use super::handle::{AckSender, Control, Proposal, Replica, Shared};
use super::transport::Transport;
use super::types::ReplicaError;
use crate::replica::raft_log::ReplicaStorage;
use crate::storage::DiskFile;

/// Proposals queued per replica before publishers wait (backpressure).
const PROPOSAL_QUEUE_MAX: usize = 4096;
/// Operator requests queued per replica.
const CONTROL_QUEUE_MAX: usize = 16;
/// Raft messages from peers queued per replica (more are dropped: Raft retransmits).
const INBOX_MAX: usize = 4096;

/// What connects a replica to its broker: where its messages go, the shared tick, and its cancellation.
#[derive(Clone)]
pub struct Wiring {
    pub transport: Arc<dyn Transport>,
    pub clock: Clock,
    pub cancel: CancellationToken,
    /// Which peer brokers were heard from lately (quiesced groups wake when one goes quiet).
    pub liveness: Arc<super::Liveness>,
}

/// fsyncs `file` on the blocking pool. A full disk is told apart: with direct I/O the fsync is where
/// appended bytes are written (storage/src/direct), so it is where the disk is found full.
async fn sync(file: Arc<dyn DiskFile>) -> Result<(), Fatal> {
    let synced = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let r = file.sync_data();
        metrics::histogram!("ferry_fsync_duration_seconds").record(started.elapsed().as_secs_f64());
        r
    })
    .await;
    match synced {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOSPC) => Err(Fatal::DiskFull(format!(
            "disk full writing the log, replica fenced: {e}"
        ))),
        Ok(Err(e)) => Err(Fatal::Other(format!("fsync failed, replica fenced: {e}"))),
        Err(e) => Err(Fatal::Other(format!("fsync task failed: {e}"))),
    }
}

/// Whatever way the driver task ends (stopped, fenced, or a panic unwinding through it), readers must learn
/// that this replica no longer leads or serves: otherwise a dead replica keeps claiming leadership, serves a
/// frozen log and stays "ready" (M2 in the durability audit). Supervision (`broker::tasks::supervise`)
/// restarts it.
struct ExitGuard {
    shared: Arc<Shared>,
    /// The driver returned (rather than panicking).
    ended: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Unwinding: the driver panicked. Dropped unfinished but not unwinding: the runtime is going away.
        if !self.ended && std::thread::panicking() {
            self.shared
                .fail("replica task panicked; the replica is fenced until restarted".into());
        }
        self.shared.stop();
    }
}

/// Starts the replica of group `group` over `storage`. `apply` state machines see every committed data
/// batch after those already in the log up to the persisted commit (the caller replays those).
pub fn spawn(
    group: u64,
    name: String,
    storage: ReplicaStorage,
    config: ReplicaConfig,
    apply: Option<Box<dyn Apply>>,
    wiring: Wiring,
) -> Result<(Replica, tokio::task::JoinHandle<()>), ReplicaError> {
    let Wiring {
        transport,
        clock,
        cancel,
        liveness,
    } = wiring;
    let core = ReplicaCore::new(
        name.clone(),
        storage.clone(),
        config,
        apply,
        liveness,
        Instant::now(),
    )?;
    let shared = Arc::new(Shared::new(
        group,
        name,
        storage,
        core.opened_high_watermark(),
    ));
    let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_MAX);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_MAX);
    // What the core opened with (its membership) reaches readers before spawn returns.
    let mut core = core;
    while let Some(action) = core.next_action() {
        match action {
            Action::Membership(m) => *shared.membership.lock() = m,
            other => unreachable!("a new replica core asked for {other:?} before any event"),
        }
    }
    let driver = Driver {
        core,
        shared: shared.clone(),
        transport,
        group,
    };
    let exit = ExitGuard {
        shared: shared.clone(),
        ended: false,
    };
    let task = tokio::spawn(async move {
        let mut exit = exit;
        driver.run(rx, inbox_rx, control_rx, clock, cancel).await;
        exit.ended = true;
    });
    Ok((
        Replica {
            tx,
            inbox: inbox_tx,
            control: control_tx,
            shared,
        },
        task,
    ))
}

struct Driver {
    core: ReplicaCore<AckSender>,
    shared: Arc<Shared>,
    transport: Arc<dyn Transport>,
    group: u64,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Proposal>,
        mut inbox: mpsc::Receiver<Message>,
        mut control: mpsc::Receiver<Control>,
        mut clock: Clock,
        cancel: CancellationToken,
    ) {
        let mut incoming = Vec::with_capacity(64);
        let mut last_tick = 0u64;
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                // Cheapest and most frequent first: with thousands of idle groups, a tick wake-up must
                // not poll every channel.
                passed = clock.next(&mut last_tick) => {
                    let Some(passed) = passed else { break };
                    if self.shared.failed.lock().is_some() {
                        // Fenced (e.g. corruption found by a read): stop leading and voting so healthy
                        // replicas take over; no clean close over data known to be bad.
                        self.core.stop(ReplicaError::Failed("partition fenced".into()));
                        self.carry_out().await;
                        return;
                    }
                    self.core.handle(Event::Ticks(passed), Instant::now());
                }
                n = inbox.recv_many(&mut incoming, MESSAGES_PER_STEP_MAX) => {
                    if n == 0 { break; }
                    self.core.handle(Event::Messages(std::mem::take(&mut incoming)), Instant::now());
                }
                n = rx.recv_many(&mut batch, PROPOSALS_PER_STEP_MAX) => {
                    if n == 0 { break; }
                    self.core.handle(Event::Proposals(std::mem::take(&mut batch)), Instant::now());
                }
                _ = self.shared.renew.notified() => {
                    self.core.handle(Event::RenewLease, Instant::now());
                }
                Some(c) = control.recv() => match c {
                    Control::TransferLeader(to) => {
                        self.core.handle(Event::TransferLeader(to), Instant::now());
                    }
                    Control::Reconfigure(voters, reply) => {
                        let _ = reply.send(self.core.reconfigure(&voters, Instant::now()));
                    }
                    #[cfg(feature = "fault-injection")]
                    Control::Panic => panic!("injected panic ({})", self.shared.name),
                },
            }
            if !self.carry_out().await {
                return;
            }
        }
        if let Err(e) = self.core.shut_down() {
            tracing::error!(partition = %self.shared.name, "clean close failed: {e}");
        }
        self.carry_out().await;
    }

    /// Carries out the core's actions in order, performing each fsync it asks for before the next; returns
    /// false once the replica is fenced (every action up to the fence carried out).
    async fn carry_out(&mut self) -> bool {
        while let Some(action) = self.core.next_action() {
            match action {
                Action::Send(msgs) => self.transport.send(self.group, msgs),
                Action::Sync(file) => {
                    // One fsync for every batch of the Ready, off the async threads.
                    let outcome = sync(file).await;
                    self.core.synced(outcome, Instant::now());
                }
                Action::Answer(reply, outcome) => {
                    let _ = reply.send(outcome);
                }
                Action::HighWatermark(hw) => {
                    self.shared.high_watermark.send_replace(hw);
                }
                Action::Membership(m) => *self.shared.membership.lock() = m,
                Action::Leadership(now) => {
                    self.shared
                        .leadership
                        .send_if_modified(|l| std::mem::replace(l, now) != now);
                }
                Action::Lease(until) => {
                    self.shared
                        .lease
                        .send_if_modified(|l| std::mem::replace(l, until) != until);
                }
                Action::InSync(in_sync) => {
                    let mut current = self.shared.in_sync.lock();
                    if *current != in_sync {
                        *current = in_sync;
                    }
                }
                Action::Quiesced(q) => self
                    .shared
                    .quiesced
                    .store(q, std::sync::atomic::Ordering::Relaxed),
                Action::Fence(Fatal::Damaged(why)) => self.shared.fail_damaged(why),
                Action::Fence(fatal) => self.shared.fail(fatal.why().to_owned()),
            }
        }
        !self.core.is_fenced()
    }
}
