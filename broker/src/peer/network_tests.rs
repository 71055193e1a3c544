//! A link against peers of both kinds: one that takes `RaftSplit` streams (entry data beside the message)
//! and one that predates them (answers UNIMPLEMENTED and takes whole messages on `Raft`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::v1::{self, peer_server::Peer};
use raft::eraftpb::{Entry, Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::PeerNetwork;
use crate::replica::Transport;
use crate::storage::OsDisk;

/// A peer that records which stream each envelope came on.
struct RecordingPeer {
    takes_split: bool,
    seen: mpsc::UnboundedSender<(&'static str, v1::RaftEnvelope)>,
}

impl RecordingPeer {
    async fn take(
        &self,
        kind: &'static str,
        req: Request<Streaming<v1::RaftBatch>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.next().await {
            for env in batch?.messages {
                let _ = self.seen.send((kind, env));
            }
        }
        Ok(Response::new(v1::RaftAck {}))
    }
}

#[tonic::async_trait]
impl Peer for RecordingPeer {
    async fn raft(
        &self,
        req: Request<Streaming<v1::RaftBatch>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        self.take("Raft", req).await
    }

    async fn raft_split(
        &self,
        req: Request<Streaming<v1::RaftBatch>>,
    ) -> Result<Response<v1::RaftAck>, Status> {
        match self.takes_split {
            true => self.take("RaftSplit", req).await,
            // What tonic answers for a method the server does not have.
            false => Err(Status::unimplemented("")),
        }
    }

    async fn forward(
        &self,
        _: Request<v1::ForwardRequest>,
    ) -> Result<Response<v1::ForwardResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn hello(
        &self,
        _: Request<v1::HelloRequest>,
    ) -> Result<Response<v1::HelloResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn local_view(
        &self,
        _: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        Err(Status::unimplemented(""))
    }
}

fn append_to_2(index: u64) -> Message {
    let mut m = Message {
        msg_type: MessageType::MsgAppend,
        to: 2,
        from: 1,
        term: 1,
        index: index - 1,
        ..Default::default()
    };
    m.entries = vec![Entry {
        index,
        term: 1,
        data: Bytes::from(vec![7u8; 4096]),
        ..Default::default()
    }]
    .into();
    m
}

/// Sends appends to a peer of the given kind until one arrives; answers the stream and envelope it came on.
async fn first_arrival(takes_split: bool) -> (&'static str, v1::RaftEnvelope) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let peer = RecordingPeer {
        takes_split,
        seen: tx,
    };
    let cancel = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::peer_server::PeerServer::new(peer))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                cancel.clone().cancelled_owned(),
            ),
    );
    let dir = tempfile::tempdir().unwrap();
    let identity = crate::identity::Identity::open(Arc::new(OsDisk), dir.path(), 1).unwrap();
    let peers = BTreeMap::from([(2, address)]);
    let net = PeerNetwork::start(
        identity,
        "127.0.0.1:1".into(),
        &peers,
        None,
        cancel.child_token(),
    );
    // Raft retransmits what a link drops (the first stream to an old peer is refused): so does this test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut index = 1;
    let got = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing arrived in 10 s"
        );
        net.send(9, vec![append_to_2(index)]);
        index += 1;
        match tokio::time::timeout(Duration::from_millis(100), seen.recv()).await {
            Ok(Some(got)) => break got,
            _ => continue,
        }
    };
    // Every byte counted into the link's queue is counted out once sent, whichever form it went in.
    let queued = || {
        net.links.read()[&2]
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    while queued() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} bytes still counted queued",
            queued()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let _ = server.await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_peer_gets_entry_data_beside_the_message() {
    let (kind, env) = first_arrival(true).await;
    assert_eq!(kind, "RaftSplit");
    assert_eq!(env.entry_data.len(), 1);
    assert_eq!(env.entry_data[0].len(), 4096);
    let m = crate::peer::envelope::joined(env.message, env.entry_data).unwrap();
    assert_eq!(m.entries[0].data.len(), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_predates_raft_split_gets_whole_messages() {
    let (kind, env) = first_arrival(false).await;
    assert_eq!(kind, "Raft");
    assert!(env.entry_data.is_empty(), "an old peer would ignore them");
    let m = crate::peer::envelope::joined(env.message, Vec::new()).unwrap();
    assert_eq!(m.entries[0].data.len(), 4096, "the data inside the message");
}
