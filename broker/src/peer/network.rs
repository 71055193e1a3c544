//! Outgoing Raft traffic: one link per peer broker, each a task that keeps one client stream open and sends
//! every queued message of every group in batches (`RaftBatch`), reconnecting with bounded backoff.
//!
//! Entry data travel beside their Raft message (`RaftEnvelope.entry_data`, the `RaftSplit` stream): the
//! message is encoded without them, and the batches the leader holds (the `Bytes` a client sent, or read from
//! the log) go to the request encoder as they are, never re-encoded into a Raft message first (the encoder
//! still copies them once into each follower's request body).
//! A peer that predates `RaftSplit` gets whole messages on `Raft`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1;
use parking_lot::RwLock;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::envelope::{envelope, envelope_len, whole};
use crate::identity::Identity;
use crate::replica::Transport;
use crate::tls::Tls;

/// Messages queued per peer before new ones are dropped (Raft retransmits what is dropped).
const LINK_QUEUE_MAX: usize = 8192;
/// Bytes of encoded messages queued per peer before new ones are dropped: with the stream buffer below, a
/// slow but connected peer costs at most about 64 + 4 × 8 MiB here (M7 in the durability audit).
const LINK_QUEUE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Messages in one `RaftBatch`.
const BATCH_MESSAGES_MAX: usize = 1024;
/// Batches buffered in an open stream (each at most `BATCH_BYTES_MAX`).
const STREAM_BUFFER: usize = 4;
/// First and largest reconnect delay (ms).
const BACKOFF_MS_MIN: u64 = 50;
const BACKOFF_MS_MAX: u64 = 2_000;
/// Longest a link stays silent: an idle link sends an empty batch this often.
const KEEPALIVE: Duration = Duration::from_millis(200);
/// How long a connection attempt may take (ms).
const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// One outgoing link.
#[derive(Debug)]
struct Link {
    address: String,
    queue: mpsc::Sender<v1::RaftEnvelope>,
    /// Bytes of the envelopes in `queue`.
    queued_bytes: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    cancel: CancellationToken,
}

/// The links to every peer of this broker. Links come and go with the cluster's members.
#[derive(Debug)]
pub struct PeerNetwork {
    node_id: u64,
    /// Stamped on every batch: peers refuse batches from another cluster or an unknown incarnation.
    identity: Arc<Identity>,
    /// host:port of this broker's own peer listener, sent with every batch so that a broker that does not
    /// know this one yet (it just joined) can answer.
    own_address: String,
    /// Links speak TLS with this broker's certificate when set.
    tls: Option<Arc<Tls>>,
    links: RwLock<HashMap<u64, Link>>,
    cancel: CancellationToken,
}

impl PeerNetwork {
    /// Starts a link task per peer (`node id → host:port` of its peer listener, self excluded).
    pub fn start(
        identity: Arc<Identity>,
        own_address: String,
        peers: &BTreeMap<u64, String>,
        tls: Option<Arc<Tls>>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let n = Arc::new(PeerNetwork {
            node_id: identity.node_id,
            identity,
            own_address,
            tls,
            links: RwLock::new(HashMap::new()),
            cancel,
        });
        n.set_peers(peers);
        n
    }

    fn link(&self, id: u64, address: &str) -> Link {
        let (tx, rx) = mpsc::channel(LINK_QUEUE_MAX);
        let up = Arc::new(AtomicBool::new(false));
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let cancel = self.cancel.child_token();
        tokio::spawn(run_link(
            (
                self.identity.clone(),
                self.own_address.clone(),
                self.tls.clone(),
            ),
            id,
            address.to_owned(),
            (rx, queued_bytes.clone()),
            up.clone(),
            cancel.clone(),
        ));
        Link {
            address: address.to_owned(),
            queue: tx,
            queued_bytes,
            connected: up,
            cancel,
        }
    }

    /// Makes the links match `peers` (this broker excluded): new peers get a link, a changed address a new
    /// one, and peers no longer listed lose theirs.
    pub fn set_peers(&self, peers: &BTreeMap<u64, String>) {
        let mut links = self.links.write();
        links.retain(|id, l| {
            let keep = peers.get(id) == Some(&l.address);
            if !keep {
                l.cancel.cancel();
            }
            keep
        });
        for (&id, addr) in peers.iter().filter(|(id, _)| **id != self.node_id) {
            links.entry(id).or_insert_with(|| self.link(id, addr));
        }
    }

    /// Adds a link to `id` at `address` unless one exists: a peer that wrote to this broker before the
    /// metadata named it (this broker just joined) gets its answers.
    pub fn learn(&self, id: u64, address: &str) {
        if id == self.node_id || self.links.read().contains_key(&id) {
            return;
        }
        let mut links = self.links.write();
        links.entry(id).or_insert_with(|| {
            tracing::info!(peer = id, %address, "learned a peer from its messages");
            self.link(id, address)
        });
    }

    /// Whether the link to `id` has an open stream (the peer was reachable at its last attempt).
    pub fn is_connected(&self, id: u64) -> bool {
        self.links
            .read()
            .get(&id)
            .is_some_and(|l| l.connected.load(Ordering::Relaxed))
    }
}

impl Transport for PeerNetwork {
    fn send(&self, group: u64, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let links = self.links.read();
        for m in msgs {
            if super::faults::drops_to(m.to) {
                continue;
            }
            match links.get(&m.to) {
                Some(link) => {
                    let env = envelope(group, m);
                    let len = envelope_len(&env);
                    let queued = link.queued_bytes.fetch_add(len, Ordering::Relaxed);
                    if queued + len > LINK_QUEUE_BYTES_MAX || link.queue.try_send(env).is_err() {
                        link.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                        tracing::debug!(group, "peer link queue full; dropped a Raft message");
                    }
                }
                None => tracing::warn!(group, to = m.to, "Raft message to an unknown broker"),
            }
        }
    }
}

/// Largest `RaftBatch` built (bytes of encoded messages): half the gRPC message limit.
const BATCH_BYTES_MAX: usize = ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX / 2;

/// Groups envelopes into batches of at most `max` bytes each (a larger single envelope goes alone).
fn split_by_size(envelopes: Vec<v1::RaftEnvelope>, max: usize) -> Vec<Vec<v1::RaftEnvelope>> {
    let mut out: Vec<Vec<v1::RaftEnvelope>> = Vec::new();
    let mut size = 0usize;
    for e in envelopes {
        let len = envelope_len(&e) as usize + 16;
        match out.last_mut() {
            Some(batch) if size + len <= max => batch.push(e),
            _ => {
                out.push(vec![e]);
                size = 0;
            }
        }
        size += len;
    }
    out
}

async fn run_link(
    (identity, from_address, tls): (Arc<Identity>, String, Option<Arc<Tls>>),
    to: u64,
    addr: String,
    (mut rx, queued_bytes): (mpsc::Receiver<v1::RaftEnvelope>, Arc<AtomicU64>),
    up: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(32 * 1024 * 1024)),
        Err(e) => {
            tracing::error!(to, %addr, "bad peer address: {e}");
            return;
        }
    };
    let mut backoff_ms = BACKOFF_MS_MIN;
    // Whether the next stream is a `RaftSplit` one (entry data beside each message): until the peer answers
    // UNIMPLEMENTED (it predates it), and again after a whole-message stream ends (it may have been upgraded).
    let mut data_beside = true;
    // Said once per link at info level; later fallbacks (after each retry) only at debug.
    let mut told_old = false;
    let mut queue = Queue {
        rx: &mut rx,
        queued_bytes: &queued_bytes,
        pending: Vec::new(),
    };
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let connected = tokio::select! {
            _ = cancel.cancelled() => return,
            c = crate::tls::connect::connect(&endpoint, tls.as_ref()) => c,
        };
        let channel = match connected {
            Ok(c) => c,
            Err(e) => {
                up.store(false, Ordering::Relaxed);
                tracing::debug!(to, %addr, "peer unreachable: {e}");
                // Raft messages go stale quickly: drop what piled up while the peer was away.
                queue.drop_queued();
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(BACKOFF_MS_MAX);
                continue;
            }
        };
        let mut client = v1::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let (stream_tx, stream_rx) = mpsc::channel::<v1::RaftBatch>(STREAM_BUFFER);
        let requests = tokio_stream::wrappers::ReceiverStream::new(stream_rx);
        let call = tokio::spawn(async move {
            match data_beside {
                true => client.raft_split(requests).await,
                false => client.raft(requests).await,
            }
        });
        backoff_ms = BACKOFF_MS_MIN;
        up.store(true, Ordering::Relaxed);
        let stream = StreamOf {
            identity: identity.as_ref(),
            from_address: from_address.clone(),
            to,
            data_beside,
        };
        if let Pumped::Stop = queue.pump(stream, &stream_tx, &cancel).await {
            return;
        }
        up.store(false, Ordering::Relaxed);
        let was_beside = std::mem::replace(&mut data_beside, true);
        match call.await {
            Ok(Err(status)) if was_beside && status.code() == tonic::Code::Unimplemented => {
                match std::mem::replace(&mut told_old, true) {
                    false => tracing::info!(
                        to,
                        "peer predates RaftSplit: sending it whole Raft messages on Raft"
                    ),
                    true => tracing::debug!(to, "peer still predates RaftSplit"),
                }
                data_beside = false;
                backoff_ms = BACKOFF_MS_MIN;
            }
            // Refused for who this broker is (another cluster, an unknown incarnation, the wrong broker):
            // retrying soon changes nothing.
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                tracing::warn!(
                    to,
                    "peer refused this broker's Raft traffic: {}",
                    status.message()
                );
                backoff_ms = BACKOFF_MS_MAX;
            }
            Ok(Err(status)) => tracing::debug!(to, "peer stream ended: {status}"),
            Err(e) => tracing::debug!(to, "peer stream task failed: {e}"),
            Ok(Ok(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
    }
}

/// How a link's stream ended.
enum Pumped {
    /// Cancelled, or the link's queue closed: the link ends.
    Stop,
    /// The stream broke: reconnect.
    Broken,
}

/// Who one stream is from and to, and in which form it carries entry data.
struct StreamOf<'a> {
    identity: &'a Identity,
    /// This broker's peer address, named in the stream's first batch.
    from_address: String,
    /// The peer's id.
    to: u64,
    /// A `RaftSplit` stream (entry data beside each message); else `Raft`, whole messages.
    data_beside: bool,
}

/// What is queued for one peer, and how many bytes of it.
struct Queue<'a> {
    rx: &'a mut mpsc::Receiver<v1::RaftEnvelope>,
    queued_bytes: &'a AtomicU64,
    pending: Vec<v1::RaftEnvelope>,
}

impl Queue<'_> {
    fn drop_queued(&mut self) {
        while let Ok(env) = self.rx.try_recv() {
            self.queued_bytes
                .fetch_sub(envelope_len(&env), Ordering::Relaxed);
        }
    }

    /// Every wake-up sends everything queued for this peer as one batch; an idle link sends an empty batch
    /// every keepalive so the peer knows this broker is alive (quiesced groups rely on it). The first batch
    /// of a stream names this broker's peer address.
    async fn pump(
        &mut self,
        stream: StreamOf<'_>,
        stream_tx: &mpsc::Sender<v1::RaftBatch>,
        cancel: &CancellationToken,
    ) -> Pumped {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            self.pending.clear();
            let n = tokio::select! {
                _ = cancel.cancelled() => return Pumped::Stop,
                n = self.rx.recv_many(&mut self.pending, BATCH_MESSAGES_MAX) => n,
                _ = keepalive.tick() => usize::MAX,
            };
            if n == 0 {
                return Pumped::Stop;
            }
            let taken: u64 = self.pending.iter().map(envelope_len).sum();
            self.queued_bytes.fetch_sub(taken, Ordering::Relaxed);
            keepalive.reset();
            // Batches stay under the gRPC message limit: split by encoded size (one message always fits).
            let batches = if n == usize::MAX {
                vec![Vec::new()] // keepalive
            } else if stream.data_beside {
                split_by_size(std::mem::take(&mut self.pending), BATCH_BYTES_MAX)
            } else {
                let pending = std::mem::take(&mut self.pending);
                split_by_size(pending.into_iter().map(whole).collect(), BATCH_BYTES_MAX)
            };
            for messages in batches {
                let batch = v1::RaftBatch {
                    from: stream.identity.node_id,
                    to: stream.to,
                    cluster_id: stream.identity.cluster_id().unwrap_or_default().to_owned(),
                    incarnation: stream.identity.incarnation,
                    messages,
                    from_address: if std::mem::take(&mut first) {
                        stream.from_address.clone()
                    } else {
                        String::new()
                    },
                };
                if stream_tx.send(batch).await.is_err() {
                    return Pumped::Broken;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod link_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn batches_stay_under_the_limit() {
        let env = |n: usize| v1::RaftEnvelope {
            group_id: 1,
            message: Bytes::from(vec![0u8; n]),
            entry_data: Vec::new(),
        };
        // Each envelope counts its message plus 16 bytes of framing.
        let batches = split_by_size(vec![env(40), env(40), env(40), env(200), env(10)], 130);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![2, 1, 1, 1],
            "an oversized message travels alone"
        );
    }
}
