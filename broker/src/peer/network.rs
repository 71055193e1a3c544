//! Outgoing Raft traffic: one link per peer broker, each a task that keeps one client stream open and sends
//! every queued message of every group in batches (`RaftBatch`), reconnecting with bounded backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::replica::Transport;

/// Messages queued per peer before new ones are dropped (Raft retransmits what is dropped).
const LINK_QUEUE_MAX: usize = 8192;
/// Messages in one `RaftBatch`.
const BATCH_MESSAGES_MAX: usize = 1024;
/// Batches buffered in an open stream.
const STREAM_BUFFER: usize = 64;
/// First and largest reconnect delay (ms).
const BACKOFF_MS_MIN: u64 = 50;
const BACKOFF_MS_MAX: u64 = 2_000;
/// How long a connection attempt may take (ms).
const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The links to every peer of this broker.
#[derive(Debug)]
pub struct PeerNetwork {
    links: HashMap<u64, mpsc::Sender<(u64, Message)>>,
    connected: HashMap<u64, Arc<AtomicBool>>,
}

impl PeerNetwork {
    /// Starts a link task per peer (`node id → host:port` of its peer listener, self excluded).
    pub fn start(
        node_id: u64,
        peers: &BTreeMap<u64, String>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let mut links = HashMap::new();
        let mut connected = HashMap::new();
        for (&id, addr) in peers.iter().filter(|(id, _)| **id != node_id) {
            let (tx, rx) = mpsc::channel(LINK_QUEUE_MAX);
            let up = Arc::new(AtomicBool::new(false));
            tokio::spawn(run_link(
                node_id,
                id,
                addr.clone(),
                rx,
                up.clone(),
                cancel.clone(),
            ));
            links.insert(id, tx);
            connected.insert(id, up);
        }
        Arc::new(PeerNetwork { links, connected })
    }

    /// Whether the link to `id` has an open stream (the peer was reachable at its last attempt).
    pub fn is_connected(&self, id: u64) -> bool {
        self.connected
            .get(&id)
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

impl Transport for PeerNetwork {
    fn send(&self, group: u64, msgs: Vec<Message>) {
        for m in msgs {
            match self.links.get(&m.to) {
                Some(link) => {
                    if link.try_send((group, m)).is_err() {
                        tracing::debug!(group, "peer link queue full; dropped a Raft message");
                    }
                }
                None => tracing::warn!(group, to = m.to, "Raft message to an unknown broker"),
            }
        }
    }
}

fn envelope(group: u64, m: &Message) -> v1::RaftEnvelope {
    let bytes = m.write_to_bytes().expect("raft messages encode");
    v1::RaftEnvelope {
        group_id: group,
        message: Bytes::from(bytes),
    }
}

async fn run_link(
    from: u64,
    to: u64,
    addr: String,
    mut rx: mpsc::Receiver<(u64, Message)>,
    up: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut backoff_ms = BACKOFF_MS_MIN;
    let mut pending: Vec<(u64, Message)> = Vec::new();
    loop {
        if cancel.is_cancelled() {
            return;
        }
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
        let connected = tokio::select! {
            _ = cancel.cancelled() => return,
            c = endpoint.connect() => c,
        };
        let channel = match connected {
            Ok(c) => c,
            Err(e) => {
                up.store(false, Ordering::Relaxed);
                tracing::debug!(to, %addr, "peer unreachable: {e}");
                // Raft messages go stale quickly: drop what piled up while the peer was away.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(BACKOFF_MS_MAX);
                continue;
            }
        };
        let mut client = v1::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let (stream_tx, stream_rx) = mpsc::channel::<v1::RaftBatch>(STREAM_BUFFER);
        let call = tokio::spawn(async move {
            client
                .raft(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                .await
        });
        backoff_ms = BACKOFF_MS_MIN;
        up.store(true, Ordering::Relaxed);
        // Pump: every wake-up sends everything queued for this peer as one batch.
        loop {
            pending.clear();
            let n = tokio::select! {
                _ = cancel.cancelled() => return,
                n = rx.recv_many(&mut pending, BATCH_MESSAGES_MAX) => n,
            };
            if n == 0 {
                return;
            }
            let messages = pending.iter().map(|(g, m)| envelope(*g, m)).collect();
            if stream_tx
                .send(v1::RaftBatch { from, to, messages })
                .await
                .is_err()
            {
                break;
            }
        }
        up.store(false, Ordering::Relaxed);
        match call.await {
            Ok(Err(status)) => tracing::debug!(to, "peer stream ended: {status}"),
            Err(e) => tracing::debug!(to, "peer stream task failed: {e}"),
            Ok(Ok(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
    }
}
