//! Consumer groups: [`GroupConsumer`] joins a group, consumes the partitions its coordinator assigns it and
//! commits what it handed to the application; plus the group admin calls.
//!
//! A background task heartbeats the coordinator, reporting the partitions it owns. The coordinator answers
//! the partitions the member may own now. A partition that leaves the answer is *revoked*: its reader stops,
//! records of it not yet handed out are dropped, and the offset after the last record handed out is
//! committed, then the next heartbeat reports it released; only then does the coordinator give it to
//! another member. Partitions that stay never stop. A member that cannot heartbeat for a whole session
//! timeout stops consuming everything (the coordinator has given its partitions away by then).
//!
//! Delivery is at-least-once: with automatic commit (the default) only offsets of records already handed to
//! the application are committed, so after a crash the records handed out since the last commit are
//! consumed again by whoever takes the partition over.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ferry_protocol::v1::{
    CommitOffsetsRequest, GroupHeartbeatRequest, GroupHeartbeatResponse, PartitionOffset,
    TopicPartition,
};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::error::ClientError;
use crate::fetch::OffsetSpec;
use crate::record::ConsumedRecord;

/// A partition, by topic and number.
pub type Tp = (String, u32);

/// Records read ahead of the application, over all partitions.
pub const PREFETCH_RECORDS_MAX: usize = 4096;
/// Bytes read ahead of the application by default, over all partitions.
pub const PREFETCH_BYTES_MAX_DEFAULT: usize = 16 << 20;

/// What a record counts against the prefetch budget (bytes; at most the whole budget).
fn prefetch_cost(r: &ConsumedRecord, budget: usize) -> usize {
    let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (r.value.len() + r.key.as_ref().map_or(0, |k| k.len()) + headers + 64).min(budget)
}
/// Pause before a partition reader that stopped on an error reads on.
const READER_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Session timeout when none is configured (ms).
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// How often offsets are committed automatically (ms).
pub const AUTO_COMMIT_INTERVAL_MS_DEFAULT: u64 = 1_000;

/// Where a partition with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The first record stored.
    #[default]
    Earliest,
    /// The end: only records published from now on.
    Latest,
}

/// How a [`GroupConsumer`] behaves.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// Static membership: a stable id (a pod name). A member that returns with it within the session
    /// timeout gets its partitions back without disturbing the others; it does not leave the group on
    /// close (its session expires instead, unless it returns).
    pub instance_id: Option<String>,
    /// The coordinator removes the member when no heartbeat arrives for this long (ms).
    pub session_timeout_ms: u32,
    /// Commit the offsets of records handed out every `auto_commit_interval_ms` (and on revoke and close).
    pub auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    pub start_from: StartFrom,
    /// "sticky" (default) or "range".
    pub assignor: String,
    /// Bytes of records read ahead of the application, over all partitions (also at most
    /// [`PREFETCH_RECORDS_MAX`] records).
    pub prefetch_bytes_max: usize,
    /// Report ownership changes through [`GroupConsumer::next_event`] (off by default: unread events would
    /// accumulate).
    pub assignment_events: bool,
}

impl GroupConfig {
    /// Defaults for `group` consuming `topics`.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> Self {
        GroupConfig {
            group: group.into(),
            topics,
            instance_id: None,
            session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
            auto_commit: true,
            auto_commit_interval_ms: AUTO_COMMIT_INTERVAL_MS_DEFAULT,
            start_from: StartFrom::Earliest,
            assignor: String::new(),
            prefetch_bytes_max: PREFETCH_BYTES_MAX_DEFAULT,
            assignment_events: false,
        }
    }
}

/// What the application and the task share: the partitions owned now and, per partition, the offset after
/// the last record handed out. One lock, so a record is either handed out before a revoke (and its offset
/// committed) or dropped.
#[derive(Default)]
struct Shared {
    owned: HashSet<Tp>,
    positions: HashMap<Tp, u64>,
    /// Partitions the application paused: their records wait.
    paused: HashSet<Tp>,
    /// Reader generation per partition: records of an older reader (before a seek, or of an ownership
    /// that ended, even if the partition came back to this member) are dropped.
    epochs: HashMap<Tp, u64>,
    /// The last reader generation given out. Generations are never reused: a partition revoked and then
    /// assigned to this member again must not take its old reader's records, still queued, for its own
    /// (they would be handed out past the committed offset the new reader starts from).
    last_epoch: u64,
    /// Until when the coordinator is sure to count this member in (the send time of the last answered
    /// heartbeat plus the session timeout). No record is handed out after it: by then the coordinator may
    /// have given the partitions to another member.
    lease_until: Option<Instant>,
    /// Ownership changes not yet read by [`GroupConsumer::next_event`] (only with `assignment_events`).
    events: std::collections::VecDeque<GroupEvent>,
    events_on: bool,
    /// Woken when an event is queued.
    waker: Option<std::task::Waker>,
}

impl Shared {
    /// Queues an ownership change for [`GroupConsumer::next_event`].
    fn event(&mut self, e: GroupEvent) {
        if self.events_on {
            self.events.push_back(e);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// False once the lease ran out: records are no longer handed out.
    fn leased(&self, now: Instant) -> bool {
        self.lease_until.is_some_and(|until| now < until)
    }
}

/// What [`GroupConsumer::next_event`] yields, in the order the application must see it: every record of an
/// ownership comes after its `Assigned` and before its `Revoked`.
#[derive(Debug, Clone)]
pub enum GroupEvent {
    /// The partition is this member's from now on; its records follow.
    Assigned(Tp),
    /// The partition is no longer this member's (revoked, the session ran out, or the consumer closed): no
    /// record of it is handed out until it is assigned again.
    Revoked(Tp),
    Record(ConsumedRecord),
}

/// A record as a reader queued it, with the reader generation of its partition (`u64::MAX` for errors).
type Queued = (u64, Result<ConsumedRecord, ClientError>);

/// Where [`GroupConsumer::seek`] moves a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Offset(u64),
    Beginning,
    End,
    /// The first record at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

enum Control {
    Commit(oneshot::Sender<Result<(), ClientError>>),
    Close(oneshot::Sender<()>),
    Seek(Tp, SeekTo, oneshot::Sender<Result<(), ClientError>>),
}

/// A member of a consumer group: a stream of the records of the partitions assigned to it.
pub struct GroupConsumer {
    records: mpsc::Receiver<Queued>,
    /// Prefetch budget: readers take a record's cost before queueing it; it comes back when the record is
    /// handed out or dropped.
    budget: Arc<tokio::sync::Semaphore>,
    budget_max: usize,
    shared: Arc<Mutex<Shared>>,
    control: mpsc::Sender<Control>,
    /// Records read but not handed out yet (their partition paused, or an event went first), each with
    /// the reader generation it came from: a record of an ownership that has since ended is never handed
    /// out, even if the partition came back to this member (its new reader starts at the committed offset).
    held: Vec<(u64, ConsumedRecord)>,
}

impl GroupConsumer {
    /// Joins `config.group` and starts consuming as soon as partitions are assigned.
    pub async fn join(client: Client, config: GroupConfig) -> Result<GroupConsumer, ClientError> {
        if config.group.is_empty() || config.topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a group consumer needs a group name and at least one topic".into(),
            ));
        }
        for t in &config.topics {
            client.partition_count(t).await?;
        }
        let (tx, rx) = mpsc::channel(PREFETCH_RECORDS_MAX);
        let budget_max = config.prefetch_bytes_max.clamp(1, u32::MAX as usize);
        let budget = Arc::new(tokio::sync::Semaphore::new(budget_max));
        let (control_tx, control_rx) = mpsc::channel(16);
        let shared = Arc::new(Mutex::new(Shared {
            events_on: config.assignment_events,
            ..Shared::default()
        }));
        let task = Member {
            client,
            config,
            member_id: String::new(),
            generation: 0,
            readers: HashMap::new(),
            committed: HashMap::new(),
            shared: shared.clone(),
            records: tx,
            last_ok: None,
            budget: budget.clone(),
            budget_max,
        };
        tokio::spawn(task.run(control_rx));
        Ok(GroupConsumer {
            records: rx,
            budget,
            budget_max,
            shared,
            control: control_tx,
            held: Vec::new(),
        })
    }

    /// The next record (marking it handed to the application), or `None` once the consumer is closed.
    pub async fn next_record(&mut self) -> Option<Result<ConsumedRecord, ClientError>> {
        futures::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next record or ownership change (with [`GroupConfig::assignment_events`]; without, records only),
    /// or `None` once the consumer is closed.
    pub async fn next_event(&mut self) -> Option<Result<GroupEvent, ClientError>> {
        futures::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// The partitions owned now.
    pub fn assignment(&self) -> Vec<Tp> {
        let mut v: Vec<Tp> = self.shared.lock().owned.iter().cloned().collect();
        v.sort();
        v
    }

    /// Records read ahead and not yet handed out: waiting in the readers' channel or held for a paused
    /// partition (at most [`PREFETCH_RECORDS_MAX`], and at most `prefetch_bytes_max` bytes of them).
    pub fn read_ahead_records(&self) -> usize {
        self.records.len() + self.held.len()
    }

    /// Stops handing out records of `tp` until [`GroupConsumer::resume`].
    pub fn pause(&self, tp: Tp) {
        self.shared.lock().paused.insert(tp);
    }

    /// Hands out records of `tp` again.
    pub fn resume(&mut self, tp: &Tp) {
        self.shared.lock().paused.remove(tp);
    }

    /// Moves an owned partition: the next records come from `to` (records read ahead are dropped). The
    /// position counts as handed out, so the next commit stores it.
    pub async fn seek(&mut self, tp: Tp, to: SeekTo) -> Result<(), ClientError> {
        self.held
            .retain(|(_, r)| (r.topic.as_str(), r.partition) != (tp.0.as_str(), tp.1));
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Seek(tp, to, tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Commits the offsets of every record handed out so far.
    pub async fn commit(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Commit(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Commits what was handed out, leaves the group (a static member stays until its session expires), and
    /// stops.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Stream for GroupConsumer {
    type Item = Result<ConsumedRecord, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.poll_item(cx) {
                Poll::Ready(Some(Ok(GroupEvent::Record(r)))) => Poll::Ready(Some(Ok(r))),
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl GroupConsumer {
    /// The next event: a queued ownership change first, then a record of a partition owned now (whose
    /// offset then counts as handed out). A record read when an event is waiting goes back to the front.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<GroupEvent, ClientError>>> {
        // Records of paused partitions wait in `held` until resumed.
        {
            let mut s = self.shared.lock();
            if let Some(e) = s.events.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            if s.events_on && !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
            let now = Instant::now();
            // Held records go before anything from the channel (they were read first). Stale ones (an
            // ended ownership, or past the lease) are dropped and the next looked at, so none is left
            // waiting behind them, nor overtaken by a later record of its partition.
            while let Some(i) = self
                .held
                .iter()
                .position(|(_, r)| !s.paused.contains(&(r.topic.clone(), r.partition)))
            {
                let (epoch, r) = self.held.remove(i);
                self.budget.add_permits(prefetch_cost(&r, self.budget_max));
                let tp = (r.topic.clone(), r.partition);
                let current = s.owned.contains(&tp) && s.epochs.get(&tp) == Some(&epoch);
                if current && s.leased(now) {
                    s.positions.insert(tp, r.offset + 1);
                    return Poll::Ready(Some(Ok(GroupEvent::Record(r))));
                }
            }
        }
        loop {
            match self.records.poll_recv(cx) {
                Poll::Ready(Some((_, Err(e)))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some((epoch, Ok(r)))) => {
                    let mut s = self.shared.lock();
                    let tp = (r.topic.clone(), r.partition);
                    let current = s.owned.contains(&tp) && s.epochs.get(&tp) == Some(&epoch);
                    if current && (s.paused.contains(&tp) || !s.events.is_empty()) {
                        // Keeps its share of the budget while held. An event queued since the check above
                        // goes first: a new ownership's `Assigned` precedes its records.
                        if s.paused.contains(&tp) {
                            self.held.push((epoch, r));
                        } else {
                            self.held.insert(0, (epoch, r));
                        }
                        match s.events.pop_front() {
                            Some(e) => return Poll::Ready(Some(Ok(e))),
                            None => continue,
                        }
                    }
                    self.budget.add_permits(prefetch_cost(&r, self.budget_max));
                    if !current || !s.leased(Instant::now()) {
                        continue; // revoked (its new owner reads it from the commit), read before a seek, or past the lease
                    }
                    s.positions.insert(tp, r.offset + 1);
                    return Poll::Ready(Some(Ok(GroupEvent::Record(r))));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The background member.
struct Member {
    client: Client,
    config: GroupConfig,
    member_id: String,
    generation: u64,
    readers: HashMap<Tp, tokio::task::JoinHandle<()>>,
    /// Offsets committed (or started from), per owned partition.
    committed: HashMap<Tp, u64>,
    shared: Arc<Mutex<Shared>>,
    records: mpsc::Sender<Queued>,
    /// When the last answered heartbeat was sent.
    last_ok: Option<Instant>,
    budget: Arc<tokio::sync::Semaphore>,
    budget_max: usize,
}

impl Member {
    async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let mut interval = Duration::from_millis(500);
        let mut next_commit =
            Instant::now() + Duration::from_millis(self.config.auto_commit_interval_ms);
        let mut beat_now = true;
        loop {
            let wait = if beat_now { Duration::ZERO } else { interval };
            // Wake at the lease's end too, to stop consuming at once rather than at the next heartbeat.
            let wait = match self.lease_until() {
                Some(until) if !self.readers.is_empty() => {
                    wait.min(until.saturating_duration_since(Instant::now()))
                }
                _ => wait,
            };
            tokio::select! {
                c = control.recv() => match c {
                    Some(Control::Commit(reply)) => {
                        let _ = reply.send(self.commit_positions().await);
                        continue;
                    }
                    Some(Control::Seek(tp, to, reply)) => {
                        let _ = reply.send(self.seek(tp, to).await);
                        continue;
                    }
                    Some(Control::Close(reply)) => {
                        self.stop_all(true).await;
                        if self.config.instance_id.is_none() && !self.member_id.is_empty() {
                            let _ = self.beat(true).await;
                        }
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.stop_all(true).await;
                        if self.config.instance_id.is_none() && !self.member_id.is_empty() {
                            let _ = self.beat(true).await;
                        }
                        return;
                    }
                },
                _ = tokio::time::sleep(wait) => {}
            }
            if self.config.auto_commit && Instant::now() >= next_commit {
                if let Err(err) = self.commit_positions().await {
                    tracing::debug!(%err, "automatic commit failed");
                }
                next_commit =
                    Instant::now() + Duration::from_millis(self.config.auto_commit_interval_ms);
            }
            if self.release_if_lease_ran_out() {
                continue;
            }
            beat_now = false;
            let sent = Instant::now();
            match self.beat(false).await {
                Ok(answer) => {
                    // An answer that comes after the lease ran out: records were dropped meanwhile (not
                    // handed out, not committed), so the readers start again from the committed offsets
                    // rather than going on past a gap.
                    self.release_if_lease_ran_out();
                    self.last_ok = Some(sent);
                    let session = Duration::from_millis(u64::from(self.config.session_timeout_ms));
                    self.shared.lock().lease_until = Some(sent + session);
                    interval =
                        Duration::from_millis(u64::from(answer.heartbeat_interval_ms.max(50)));
                    beat_now = self.adopt(answer).await;
                }
                Err(err) if is_unknown_member(&err) => {
                    tracing::info!(group = %self.config.group, "no longer a member; rejoining");
                    self.stop_all(false).await;
                    self.member_id.clear();
                    beat_now = true;
                }
                Err(err) if is_fenced(&err) => {
                    // Another process joined under our instance id: it has our partitions. Rejoining would
                    // fence it in turn; stop consuming (at the lease's end at the latest) and say so.
                    if !self.readers.is_empty() {
                        tracing::warn!(group = %self.config.group, %err, "fenced by a newer consumer");
                        self.stop_all(false).await;
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, "heartbeat failed");
                    self.release_if_lease_ran_out();
                }
            }
        }
    }

    fn lease_until(&self) -> Option<Instant> {
        self.shared.lock().lease_until
    }

    /// Past the lease (no heartbeat answered within a session timeout of its sending), the coordinator may
    /// have given our partitions to others: stop consuming them, without committing (a commit now could
    /// overwrite the new owner's). True if it released anything.
    fn release_if_lease_ran_out(&mut self) -> bool {
        let expired = self.lease_until().is_some_and(|u| Instant::now() >= u);
        if !expired || self.readers.is_empty() {
            return false;
        }
        tracing::warn!(group = %self.config.group, last_answered = ?self.last_ok.map(|t| t.elapsed()), "no heartbeat answered within the session timeout; releasing every partition");
        let owned: Vec<Tp> = self.readers.keys().cloned().collect();
        for tp in owned {
            self.release(&tp);
        }
        self.member_id.clear();
        true
    }

    async fn beat(&self, leave: bool) -> Result<GroupHeartbeatResponse, ClientError> {
        let owned: Vec<TopicPartition> = self
            .readers
            .keys()
            .map(|(topic, partition)| TopicPartition {
                topic: topic.clone(),
                partition: *partition,
            })
            .collect();
        let request = GroupHeartbeatRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            instance_id: self.config.instance_id.clone().unwrap_or_default(),
            topics: self.config.topics.clone(),
            session_timeout_ms: self.config.session_timeout_ms,
            owned,
            leave,
            assignor: self.config.assignor.clone(),
        };
        self.client.group_heartbeat(request).await
    }

    /// Takes an answer: revokes what left it, starts what is new. True when a revoke happened (report it at
    /// once, so the partition's next owner need not wait a heartbeat interval).
    async fn adopt(&mut self, answer: GroupHeartbeatResponse) -> bool {
        self.member_id = answer.member_id;
        self.generation = answer.generation;
        let assigned: HashSet<Tp> = answer
            .assignment
            .iter()
            .map(|t| (t.topic.clone(), t.partition))
            .collect();
        let revoked: Vec<Tp> = self
            .readers
            .keys()
            .filter(|tp| !assigned.contains(*tp))
            .cloned()
            .collect();
        for tp in &revoked {
            self.stop(tp, true).await;
        }
        let committed: HashMap<Tp, u64> = answer
            .committed
            .into_iter()
            .map(|o| ((o.topic, o.partition), o.offset))
            .collect();
        for tp in assigned {
            if self.readers.contains_key(&tp) {
                continue;
            }
            let start = match committed.get(&tp) {
                Some(o) => *o,
                None => {
                    let spec = match self.config.start_from {
                        StartFrom::Earliest => OffsetSpec::Earliest,
                        StartFrom::Latest => OffsetSpec::Latest,
                    };
                    match self.client.list_offsets(&tp.0, tp.1, spec).await {
                        Ok(r) => r.offset,
                        Err(err) => {
                            tracing::debug!(%err, "start offset of {}-{}", tp.0, tp.1);
                            continue; // not owned yet; the next heartbeat hands it out again
                        }
                    }
                }
            };
            self.start(tp, start);
        }
        !revoked.is_empty()
    }

    fn start(&mut self, tp: Tp, offset: u64) {
        self.committed.insert(tp.clone(), offset);
        // Queued before the reader exists, so before any record of this ownership.
        self.shared.lock().event(GroupEvent::Assigned(tp.clone()));
        self.read_from(tp, offset);
    }

    /// (Re)starts the reader of `tp` at `offset`, under a new reader generation.
    fn read_from(&mut self, tp: Tp, offset: u64) {
        if let Some(old) = self.readers.remove(&tp) {
            old.abort();
        }
        let epoch = {
            let mut s = self.shared.lock();
            s.owned.insert(tp.clone());
            s.positions.insert(tp.clone(), offset);
            s.last_epoch += 1;
            let e = s.last_epoch;
            s.epochs.insert(tp.clone(), e);
            e
        };
        let client = self.client.clone();
        let tx = self.records.clone();
        let (budget, budget_max) = (self.budget.clone(), self.budget_max);
        let (topic, partition) = tp.clone();
        // A reader outlives broker failures: when its stream ends with an error (a fenced replica, retries
        // exhausted), it reports the error once and reads on from where it was after a pause.
        let reader = tokio::spawn(async move {
            let mut next = offset;
            loop {
                let stream = client.subscribe(&topic, partition, next);
                let mut stream = std::pin::pin!(stream);
                while let Some(item) = stream.next().await {
                    let gen = match &item {
                        Ok(r) => {
                            next = r.offset + 1;
                            let cost = prefetch_cost(r, budget_max) as u32;
                            match budget.acquire_many(cost).await {
                                Ok(p) => p.forget(),
                                Err(_) => return,
                            }
                            epoch
                        }
                        Err(_) => u64::MAX,
                    };
                    if tx.send((gen, item)).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(READER_RETRY_PAUSE).await;
            }
        });
        self.readers.insert(tp, reader);
    }

    async fn seek(&mut self, tp: Tp, to: SeekTo) -> Result<(), ClientError> {
        if !self.readers.contains_key(&tp) {
            return Err(ClientError::InvalidArgument(format!(
                "{}-{} is not assigned to this member",
                tp.0, tp.1
            )));
        }
        let offset = match to {
            SeekTo::Offset(o) => o,
            SeekTo::Beginning => {
                self.client
                    .list_offsets(&tp.0, tp.1, OffsetSpec::Earliest)
                    .await?
                    .offset
            }
            SeekTo::End => {
                self.client
                    .list_offsets(&tp.0, tp.1, OffsetSpec::Latest)
                    .await?
                    .offset
            }
            SeekTo::Timestamp(ms) => {
                self.client
                    .list_offsets(&tp.0, tp.1, OffsetSpec::Timestamp(ms))
                    .await?
                    .offset
            }
        };
        self.read_from(tp, offset);
        Ok(())
    }

    /// Stops reading `tp` and handing out its records; the offset after the last one handed out.
    fn release(&mut self, tp: &Tp) -> Option<u64> {
        if let Some(reader) = self.readers.remove(tp) {
            reader.abort();
        }
        let mut s = self.shared.lock();
        if s.owned.remove(tp) {
            s.event(GroupEvent::Revoked(tp.clone()));
        }
        s.epochs.remove(tp);
        self.committed.remove(tp);
        s.positions.remove(tp)
    }

    /// Stops consuming `tp`; with `commit`, commits what was handed out of it first.
    async fn stop(&mut self, tp: &Tp, commit: bool) {
        let committed = self.committed.get(tp).copied();
        let position = self.release(tp);
        if let (true, Some(position)) = (commit, position) {
            if committed != Some(position) {
                let offsets = vec![PartitionOffset {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset: position,
                }];
                if let Err(err) = self.commit(offsets).await {
                    tracing::warn!(%err, "commit of revoked {}-{} failed", tp.0, tp.1);
                }
            }
        }
    }

    async fn stop_all(&mut self, commit: bool) {
        if commit {
            let _ = self.commit_positions().await;
        }
        let owned: Vec<Tp> = self.readers.keys().cloned().collect();
        for tp in owned {
            self.stop(&tp, false).await;
        }
    }

    /// Commits the position of every owned partition that moved since its last commit.
    async fn commit_positions(&mut self) -> Result<(), ClientError> {
        let moved: Vec<(Tp, u64)> = {
            let s = self.shared.lock();
            s.positions
                .iter()
                .filter(|(tp, o)| s.owned.contains(*tp) && self.committed.get(*tp) != Some(*o))
                .map(|(tp, o)| (tp.clone(), *o))
                .collect()
        };
        if moved.is_empty() {
            return Ok(());
        }
        let offsets = moved
            .iter()
            .map(|((topic, partition), offset)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect();
        self.commit(offsets).await?;
        for (tp, o) in moved {
            self.committed.insert(tp, o);
        }
        Ok(())
    }

    async fn commit(&self, offsets: Vec<PartitionOffset>) -> Result<(), ClientError> {
        let request = CommitOffsetsRequest {
            group: self.config.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
            offsets,
        };
        self.client.commit_offsets(request).await
    }
}

fn is_fenced(err: &ClientError) -> bool {
    matches!(err, ClientError::Status { code: tonic::Code::FailedPrecondition, message }
        if message.contains("this one is fenced"))
}

fn is_unknown_member(err: &ClientError) -> bool {
    matches!(err, ClientError::Status { code: tonic::Code::FailedPrecondition, message }
        if message.contains("is not in the group"))
}
