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
    links: HashMap<u64, mpsc::Sender<v1::RaftEnvelope>>,
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
                    // Encode now, on the replica's task: entry data may be slices of a segment map, which
                    // must not be read later, after Raft may have truncated that file.
                    if link.try_send(envelope(group, &m)).is_err() {
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
        let len = e.message.len() + 16;
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
    mut rx: mpsc::Receiver<v1::RaftEnvelope>,
    up: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut backoff_ms = BACKOFF_MS_MIN;
    let mut pending: Vec<v1::RaftEnvelope> = Vec::new();
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
            // Batches stay under the gRPC message limit: split by encoded size (one message always fits).
            let mut sent_all = true;
            for messages in split_by_size(std::mem::take(&mut pending), BATCH_BYTES_MAX) {
                if stream_tx
                    .send(v1::RaftBatch { from, to, messages })
                    .await
                    .is_err()
                {
                    sent_all = false;
                    break;
                }
            }
            if !sent_all {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_under_the_limit() {
        let env = |n: usize| v1::RaftEnvelope {
            group_id: 1,
            message: Bytes::from(vec![0u8; n]),
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
