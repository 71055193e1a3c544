//! The `ferry.v1.Peer` server: receives batches of Raft messages and routes them.

use std::sync::Arc;

use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1::{self, peer_server::Peer};
use raft::eraftpb::Message;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::router::Router;

/// The peer service of one broker.
#[derive(Debug)]
pub struct PeerService {
    node_id: u64,
    router: Arc<Router>,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        req: Request<Streaming<v1::RaftBatch>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.to != self.node_id {
                return Err(Status::failed_precondition(format!(
                    "Raft batch for broker {} reached broker {}: check --peers",
                    batch.to, self.node_id
                )));
            }
            for env in batch.messages {
                // Zero-copy: entry data are slices of the received buffer.
                let msg =
                    match <Message as protobuf::Message>::parse_from_carllerche_bytes(&env.message)
                    {
                        Ok(m) => m,
                        Err(e) => {
                            return Err(Status::invalid_argument(format!(
                                "undecodable Raft message: {e}"
                            )))
                        }
                    };
                if msg.to != self.node_id || msg.from != batch.from {
                    return Err(Status::invalid_argument(
                        "Raft message addressed inconsistently with its batch",
                    ));
                }
                self.router.deliver(env.group_id, msg);
            }
        }
        Ok(Response::new(v1::RaftAck {}))
    }
}

/// Serves the peer service on `listener` until `cancel` fires.
pub async fn serve_peer(
    node_id: u64,
    router: Arc<Router>,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let svc = v1::peer_server::PeerServer::new(PeerService { node_id, router })
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            cancel.cancelled_owned(),
        )
        .await
}
