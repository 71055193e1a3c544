//! The `ferry.v1.Admin` service: topics and the cluster.

use std::sync::Arc;

use ferry_protocol::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{brokers, topic_info};
use crate::broker::Broker;
use crate::metadata::TopicSettings;

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    /// The service over `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        AdminService { broker }
    }
}

/// How long a broker waits for another broker's view of a topic (ms).
const LEADER_VIEW_TIMEOUT_MS: u64 = 2_000;

impl AdminService {
    /// Replaces the entries of partitions led elsewhere with their leader's own view, asking each leader
    /// once. A leader that does not answer leaves this broker's view in place.
    async fn merge_leader_views(&self, info: &mut v1::TopicInfo) {
        let me = self.broker.config.node_id;
        let mut leaders: Vec<u64> = info
            .partition_info
            .iter()
            .map(|p| p.leader)
            .filter(|l| *l != 0 && *l != me)
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        let addresses = self.broker.metadata().brokers;
        for leader in leaders {
            let Some(addr) = addresses.get(&leader) else {
                continue;
            };
            let ask = async {
                let mut c = v1::admin_client::AdminClient::connect(format!("http://{addr}"))
                    .await
                    .ok()?;
                let req = v1::DescribeTopicRequest {
                    name: info.name.clone(),
                    local_only: true,
                };
                c.describe_topic(req).await.ok().map(Response::into_inner)
            };
            let timeout = std::time::Duration::from_millis(LEADER_VIEW_TIMEOUT_MS);
            let Ok(Some(theirs)) = tokio::time::timeout(timeout, ask).await else {
                continue;
            };
            for (mine, their) in info.partition_info.iter_mut().zip(theirs.partition_info) {
                if mine.leader == leader && their.leader == leader {
                    *mine = their;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        req: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        let req = req.into_inner();
        let c = req.config.unwrap_or_default();
        let settings = TopicSettings {
            retention_bytes: c.retention_bytes,
            retention_ms: c.retention_ms,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
        };
        let t = self
            .broker
            .create_topic(&req.name, req.partitions, req.replicas, settings)
            .await
            .map_err(to_status)?;
        Ok(Response::new(topic_info(&self.broker, &t)))
    }

    async fn delete_topic(
        &self,
        req: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let req = req.into_inner();
        ferry_protocol::topic::validate_topic_name(&req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.broker
            .delete_topic(&req.name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _req: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let meta = self.broker.metadata();
        let topics = meta
            .topics
            .values()
            .map(|t| topic_info(&self.broker, t))
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        let req = req.into_inner();
        ferry_protocol::topic::validate_topic_name(&req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let t = self.broker.topic(&req.name).map_err(to_status)?;
        let mut info = topic_info(&self.broker, &t);
        if !req.local_only {
            self.merge_leader_views(&mut info).await;
        }
        Ok(Response::new(info))
    }

    async fn transfer_leader(
        &self,
        req: Request<v1::TransferLeaderRequest>,
    ) -> Result<Response<v1::TransferLeaderResponse>, Status> {
        let req = req.into_inner();
        ferry_protocol::topic::validate_topic_name(&req.topic)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let leader = self
            .broker
            .transfer_leader(&req.topic, req.partition, req.to)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v1::TransferLeaderResponse { leader }))
    }

    async fn describe_cluster(
        &self,
        _req: Request<v1::DescribeClusterRequest>,
    ) -> Result<Response<v1::DescribeClusterResponse>, Status> {
        Ok(Response::new(v1::DescribeClusterResponse {
            brokers: brokers(&self.broker),
            controller: self.broker.controller().leader(),
            node_id: self.broker.config.node_id,
        }))
    }
}
