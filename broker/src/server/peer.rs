//! The `ferry.v1.Peer` server on the peer port: Raft batches from other brokers go to the router; forwarded
//! controller commands are proposed here when this broker leads the controller.

use std::sync::{Arc, OnceLock};

use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1::{self, peer_server::Peer};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::conn::{ConnInfo, Side};
use super::status::to_status;
use crate::broker::Broker;
use crate::identity::{check_cluster_id, HelloAnswer, Identity};
use crate::peer::envelope::joined;
use crate::peer::Router;
use crate::tls::Tls;

/// HTTP/2 windows of the peer port (bytes): room for whole Raft appends.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// Largest HTTP/2 frame payload a peer may send (bytes): a replication message of a few batches travels in
/// a handful of frames, where HTTP/2's default 16 KiB made a frame (parsed, flow-controlled, appended to
/// tonic's buffer) of every 16 KiB.
const FRAME_BYTES_MAX: u32 = 1024 * 1024;
/// Most concurrent streams per peer connection (a broker keeps one Raft stream open per peer, plus a few
/// forwarded commands).
const STREAMS_PER_CONNECTION_MAX: u32 = 64;
/// Most open peer connections (brokers, each with a link and occasional command connections).
const CONNECTIONS_MAX: usize = 256;

/// The peer service of one broker.
#[derive(Debug)]
pub struct PeerService {
    node_id: u64,
    /// This broker's identity: batches and commands from another cluster, or from an incarnation the
    /// cluster does not know for their sender, are refused; Hello is answered from it.
    identity: Arc<Identity>,
    router: Arc<Router>,
    /// Where forwarded controller commands go, once the broker has started (never set in replica-level
    /// tests, which only replicate).
    broker: Arc<OnceLock<Arc<Broker>>>,
    /// Fires when the server stops: open Raft streams end then (they never end on their own, so a graceful
    /// shutdown would otherwise wait for them forever, and a restarted broker in the same process would
    /// keep receiving through its predecessor's connections).
    cancel: CancellationToken,
    /// With TLS, every peer presents a certificate of the cluster's CA naming the broker it speaks for.
    tls: Option<Arc<Tls>>,
}

impl PeerService {
    /// A stream of Raft batches (`Raft` or `RaftSplit`: either may carry entry data beside the message).
    async fn receive_raft(
        &self,
        req: Request<Streaming<v1::RaftBatch>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        let (node_id, router) = (self.node_id, &self.router);
        let certified = self.certified_ids(&req);
        let mut stream = req.into_inner();
        let mut learned = false;
        let liveness = router.liveness();
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => {
                    return Err(Status::unavailable("this broker is stopping"));
                }
                next = stream.next() => next,
            };
            let Some(batch) = next else { break };
            let batch = batch?;
            if crate::peer::faults::drops_from(batch.from) {
                continue;
            }
            check_certified("Raft traffic", certified.as_deref(), batch.from)?;
            self.check_sender(batch.from, &batch.cluster_id, batch.incarnation)?;
            liveness.heard(batch.from);
            if !learned && !batch.from_address.is_empty() {
                if let Some(b) = self.broker.get() {
                    b.learn_peer(batch.from, &batch.from_address);
                    learned = true;
                }
            }
            if batch.to != node_id {
                return Err(Status::failed_precondition(format!(
                    "Raft batch for broker {} reached broker {node_id}: check --peers",
                    batch.to
                )));
            }
            // Injected delay, loss and duplication (fault-injection runs only; see peer::faults).
            let mut impaired = match crate::peer::faults::impairment() {
                None => None,
                Some(imp) => match imp.roll() {
                    None => continue,
                    Some(fate) => Some((fate, Vec::with_capacity(batch.messages.len()))),
                },
            };
            for env in batch.messages {
                // Zero-copy: entry data are slices of the received buffer.
                let msg = joined(env.message, env.entry_data).map_err(Status::invalid_argument)?;
                if msg.to != node_id || msg.from != batch.from {
                    return Err(Status::invalid_argument(
                        "Raft message addressed inconsistently with its batch",
                    ));
                }
                match &mut impaired {
                    None => {
                        router.deliver(env.group_id, msg);
                    }
                    Some((_, held)) => held.push((env.group_id, msg)),
                }
            }
            if let Some(((delay, copies), held)) = impaired {
                let router = Arc::clone(router);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    for _ in 1..copies {
                        for (group, msg) in &held {
                            router.deliver(*group, msg.clone());
                        }
                    }
                    for (group, msg) in held {
                        router.deliver(group, msg);
                    }
                });
            }
        }
        Ok(Response::new(v1::RaftAck {}))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        req: Request<Streaming<v1::RaftBatch>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        self.receive_raft(req).await
    }

    async fn raft_split(
        &self,
        req: Request<Streaming<v1::RaftBatch>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        self.receive_raft(req).await
    }

    async fn forward(
        &self,
        req: Request<v1::ForwardRequest>,
    ) -> Result<Response<v1::ForwardResponse>, Status> {
        if let Some(ids) = self.certified_ids(&req) {
            // A command is proposed on behalf of the broker whose certificate sent it: one broker, named.
            let [from] = ids[..] else {
                return Err(Status::permission_denied(format!(
                    "forwarded command refused: the sender's certificate names no single broker ({})",
                    self.expected_names()
                )));
            };
            tracing::debug!(from, "forwarded controller command");
        }
        let req = req.into_inner();
        self.check_cluster(&req.cluster_id)
            .map_err(|why| Status::failed_precondition(format!("command refused: {why}")))?;
        let batch = req.command;
        let broker = self
            .broker
            .get()
            .ok_or_else(|| Status::unavailable("this broker is still starting"))?;
        let base_offset = broker.propose_local(batch).await.map_err(to_status)?;
        Ok(Response::new(v1::ForwardResponse { base_offset }))
    }

    async fn local_view(
        &self,
        req: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        if self.certified_ids(&req).is_some_and(|ids| ids.len() != 1) {
            return Err(Status::permission_denied(format!(
                "a topic view is only for brokers: the asker's certificate names no single broker ({})",
                self.expected_names()
            )));
        }
        let req = req.into_inner();
        ferry_protocol::topic::validate_topic_name(&req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let broker = self
            .broker
            .get()
            .ok_or_else(|| Status::unavailable("this broker is still starting"))?;
        let t = broker.topic(&req.name).map_err(to_status)?;
        Ok(Response::new(super::views::topic_info(
            &t,
            broker.topic_view(&t),
        )))
    }

    async fn hello(
        &self,
        req: Request<v1::HelloRequest>,
    ) -> Result<Response<v1::HelloResponse>, Status> {
        let certified = self.certified_ids(&req);
        let req = req.into_inner();
        check_certified("Hello", certified.as_deref(), req.node_id)?;
        if !req.cluster_id.is_empty() {
            check_cluster_id(&req.cluster_id).map_err(Status::invalid_argument)?;
        }
        let mut a = HelloAnswer {
            node_id: self.node_id,
            cluster_id: self.identity.cluster_id().unwrap_or_default().to_owned(),
            fresh: self.identity.is_pristine(),
            ..HelloAnswer::default()
        };
        if req.fresh && req.node_id != self.node_id {
            if let Some(b) = self.broker.get() {
                b.answer_hello(req.node_id, &mut a).await;
            }
        }
        Ok(Response::new(a.into()))
    }
}

/// Refuses what a peer sends as broker `claimed` unless TLS is off (`certified` `None`) or its certificate
/// names that broker and no other.
fn check_certified(what: &str, certified: Option<&[u64]>, claimed: u64) -> Result<(), Status> {
    match certified {
        None => Ok(()),
        Some([id]) if *id == claimed => Ok(()),
        Some(ids) => Err(Status::permission_denied(format!(
            "{what} claiming to be from broker {claimed} refused: the sender's certificate names {}",
            if ids.is_empty() {
                "no broker".to_owned()
            } else {
                format!("broker {ids:?}")
            }
        ))),
    }
}

impl PeerService {
    /// With TLS, the broker ids the sender's certificate names (empty if none); `None` without TLS.
    fn certified_ids<T>(&self, req: &Request<T>) -> Option<Vec<u64>> {
        let tls = self.tls.as_ref()?;
        let cert = req
            .extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.peer_cert.as_ref());
        Some(cert.map(|c| tls.peer_names.ids_in(c)).unwrap_or_default())
    }

    fn expected_names(&self) -> String {
        match &self.tls {
            Some(t) => format!("expected a name such as {}", t.peer_names.name_of(1)),
            None => String::new(),
        }
    }

    /// Refuses a batch from another cluster, or from an incarnation of `from` other than the one the
    /// cluster registered (its data dir was replaced: it would vote having forgotten its votes). A sender
    /// without an identity (0, an older version) passes.
    fn check_sender(&self, from: u64, cluster_id: &str, incarnation: u64) -> Result<(), Status> {
        self.check_cluster(cluster_id).map_err(|why| {
            Status::failed_precondition(format!("Raft traffic from broker {from} refused: {why}"))
        })?;
        let known = self
            .broker
            .get()
            .and_then(|b| b.registered_incarnation(from));
        match known {
            Some(k) if incarnation != 0 && incarnation != k => {
                Err(Status::failed_precondition(format!(
                    "Raft traffic from broker {from} refused: it runs on a data dir of incarnation \
                     {incarnation:016x}, but the cluster registered broker {from} with {k:016x}: its data \
                     dir was replaced, and it must not vote with forgotten state (docs/operations.md, \
                     \"A broker lost its data dir\")"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Why a peer of cluster `theirs` (empty: none yet) is not of this broker's cluster.
    fn check_cluster(&self, theirs: &str) -> Result<(), String> {
        let Some(own) = self.identity.cluster_id() else {
            return Ok(());
        };
        if theirs.is_empty() || theirs == own {
            return Ok(());
        }
        check_cluster_id(theirs)?;
        Err(format!(
            "the sender belongs to cluster {theirs}, this broker ({}) to cluster {own}: one of them runs on \
             another cluster's data dir, or its peers name another cluster's brokers (docs/operations.md, \
             \"Identity\")",
            self.node_id
        ))
    }
}

/// Serves the peer service on `listener` (through mTLS with `tls`) until `cancel` fires.
pub async fn serve_peer(
    identity: Arc<Identity>,
    router: Arc<Router>,
    broker: Arc<OnceLock<Arc<Broker>>>,
    (listener, tls): (tokio::net::TcpListener, Option<Arc<Tls>>),
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let svc = v1::peer_server::PeerServer::new(PeerService {
        node_id: identity.node_id,
        identity,
        router,
        broker,
        cancel: cancel.clone(),
        tls: tls.clone(),
    })
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_frame_size(Some(FRAME_BYTES_MAX))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            super::conn::incoming(
                listener,
                Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX)),
                "peer",
                tls.map(|t| (t, Side::Peer)),
            ),
            cancel.cancelled_owned(),
        )
        .await
}

#[cfg(test)]
#[path = "peer_tests.rs"]
mod tests;
