//! The gRPC [`Dialer`]: how the broker asks other brokers (their views of a topic, forwarded controller
//! commands), all over their peer ports.

use std::collections::HashMap;

use bytes::Bytes;
use ferry_protocol::v1;
use futures::future::BoxFuture;

use super::views::partition_view;
use crate::views::{Dialer, ForwardError, Hello, HelloAnswer, TopicView};

/// How long a broker waits for another broker's view of a topic (ms).
const VIEW_TIMEOUT_MS: u64 = 2_000;
/// How long a Hello may take (ms): the answering controller leader commits a barrier first.
const HELLO_TIMEOUT_MS: u64 = 3_000;
/// How long a connection attempt to another broker may take (ms).
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Asks other brokers over gRPC: one lazily connected channel per address, reused (not a new connection
/// per request: L7 in the durability audit).
#[derive(Debug, Default)]
pub struct GrpcDialer {
    channels: parking_lot::Mutex<HashMap<String, tonic::transport::Channel>>,
    /// Other brokers are dialed over TLS, presenting this broker's certificate, when set.
    tls: Option<std::sync::Arc<crate::tls::Tls>>,
}

impl GrpcDialer {
    /// A dialer speaking TLS when `tls` is set.
    pub fn new(tls: Option<std::sync::Arc<crate::tls::Tls>>) -> Self {
        GrpcDialer {
            channels: Default::default(),
            tls,
        }
    }

    fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad broker address {addr}: {e}"))?
            .connect_timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true);
        let c = crate::tls::connect::connect_lazy(&endpoint, self.tls.as_ref());
        channels.insert(addr.to_owned(), c.clone());
        Ok(c)
    }
}

impl Dialer for GrpcDialer {
    fn local_view(&self, addr: String, name: String) -> BoxFuture<'_, Option<TopicView>> {
        Box::pin(async move {
            let channel = self.channel(&addr).ok()?;
            let ask = async {
                let mut c = v1::peer_client::PeerClient::new(channel);
                let req = v1::DescribeTopicRequest {
                    name,
                    local_only: true,
                };
                c.local_view(req)
                    .await
                    .ok()
                    .map(tonic::Response::into_inner)
            };
            let info = tokio::time::timeout(std::time::Duration::from_millis(VIEW_TIMEOUT_MS), ask)
                .await
                .ok()
                .flatten()?;
            Some(TopicView {
                name: info.name,
                partitions: info
                    .partition_info
                    .into_iter()
                    .map(partition_view)
                    .collect(),
            })
        })
    }

    fn forward(
        &self,
        addr: String,
        batch: Bytes,
        cluster_id: String,
    ) -> BoxFuture<'_, Result<u64, ForwardError>> {
        Box::pin(async move {
            let channel = self.channel(&addr).map_err(ForwardError::Refused)?;
            let mut client = v1::peer_client::PeerClient::new(channel);
            let req = v1::ForwardRequest {
                command: batch,
                cluster_id,
            };
            match client.forward(req).await {
                Ok(r) => Ok(r.into_inner().base_offset),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    Err(ForwardError::Unreachable(s.message().to_owned()))
                }
                Err(s) => Err(ForwardError::Refused(s.message().to_owned())),
            }
        })
    }

    fn hello(&self, addr: String, hello: Hello) -> BoxFuture<'_, Result<HelloAnswer, String>> {
        Box::pin(async move {
            let channel = self.channel(&addr)?;
            let mut client = v1::peer_client::PeerClient::new(channel);
            let req = v1::HelloRequest {
                node_id: hello.node_id,
                cluster_id: hello.cluster_id,
                incarnation: hello.incarnation,
                fresh: hello.fresh,
            };
            let ask = client.hello(req);
            let a = tokio::time::timeout(std::time::Duration::from_millis(HELLO_TIMEOUT_MS), ask)
                .await
                .map_err(|_| format!("no answer within {HELLO_TIMEOUT_MS} ms"))?
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            if !a.cluster_id.is_empty() {
                crate::identity::check_cluster_id(&a.cluster_id)?;
            }
            Ok(HelloAnswer::from(a))
        })
    }
}

impl From<v1::HelloResponse> for HelloAnswer {
    fn from(a: v1::HelloResponse) -> Self {
        HelloAnswer {
            node_id: a.node_id,
            cluster_id: a.cluster_id,
            fresh: a.fresh,
            confirmed: a.confirmed,
            registered: a.registered,
            registered_incarnation: a.registered_incarnation,
            leader_address: a.leader_address,
        }
    }
}

impl From<HelloAnswer> for v1::HelloResponse {
    fn from(a: HelloAnswer) -> Self {
        v1::HelloResponse {
            node_id: a.node_id,
            cluster_id: a.cluster_id,
            fresh: a.fresh,
            confirmed: a.confirmed,
            registered: a.registered,
            registered_incarnation: a.registered_incarnation,
            leader_address: a.leader_address,
        }
    }
}
