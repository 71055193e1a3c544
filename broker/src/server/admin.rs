//! The `ferry.v1.Admin` service: topics, the cluster and ACLs. Each call is authorized first (auth.rs).

use std::sync::Arc;

use ferry_protocol::v1::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::auth::{Auth, Principal, CLUSTER};
use super::via::Via;
use super::views::{brokers, moving_partitions, topic_info};
use crate::acl::{Operation, ResourceType};
use crate::broker::Broker;
use crate::metadata::TopicSettings;

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    broker: Arc<Broker>,
    /// The listener it serves: which broker addresses its clients are told.
    via: Via,
    auth: Auth,
}

impl AdminService {
    /// The service over `broker`.
    pub fn new(broker: Arc<Broker>, via: Via, auth: Auth) -> Self {
        AdminService { broker, via, auth }
    }

    /// The principal of `req`, refused unless it may do `op` on `kind` `name`.
    fn allowed<T>(
        &self,
        req: &Request<T>,
        op: Operation,
        kind: ResourceType,
        name: &str,
    ) -> Result<Principal, Status> {
        let p = self.auth.principal(req)?;
        self.auth.check(&self.broker, &p, op, kind, name)?;
        Ok(p)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_topic(
        &self,
        req: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        // `create` on the topic's name, or on the cluster (any name).
        let p = self.auth.principal(&req)?;
        let name = &req.get_ref().name;
        if !self.auth.may(
            &self.broker,
            &p,
            Operation::Create,
            ResourceType::Cluster,
            CLUSTER,
        ) {
            self.auth.check(
                &self.broker,
                &p,
                Operation::Create,
                ResourceType::Topic,
                name,
            )?;
        }
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
            .map_err(|e| self.via.status(&self.broker, e))?;
        Ok(Response::new(topic_info(&t, self.broker.topic_view(&t))))
    }

    async fn delete_topic(
        &self,
        req: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        self.allowed(
            &req,
            Operation::Delete,
            ResourceType::Topic,
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        ferry_protocol::topic::validate_topic_name(&req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.broker
            .delete_topic(&req.name)
            .await
            .map_err(|e| self.via.status(&self.broker, e))?;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        req: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let p = self.auth.principal(&req)?;
        let meta = self.broker.metadata();
        let topics = meta
            .topics
            .values()
            .filter(|t| {
                self.auth.may(
                    &self.broker,
                    &p,
                    Operation::Describe,
                    ResourceType::Topic,
                    &t.name,
                )
            })
            .map(|t| topic_info(t, self.broker.topic_view(t)))
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::TopicInfo>, Status> {
        self.allowed(
            &req,
            Operation::Describe,
            ResourceType::Topic,
            &req.get_ref().name,
        )?;
        let req = req.into_inner();
        ferry_protocol::topic::validate_topic_name(&req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let t = self
            .broker
            .topic(&req.name)
            .map_err(|e| self.via.status(&self.broker, e))?;
        let view = if req.local_only {
            self.broker.topic_view(&t)
        } else {
            self.broker.cluster_view(&t, true).await
        };
        Ok(Response::new(topic_info(&t, view)))
    }

    async fn transfer_leader(
        &self,
        req: Request<v1::TransferLeaderRequest>,
    ) -> Result<Response<v1::TransferLeaderResponse>, Status> {
        self.allowed(
            &req,
            Operation::Alter,
            ResourceType::Topic,
            &req.get_ref().topic,
        )?;
        let req = req.into_inner();
        ferry_protocol::topic::validate_topic_name(&req.topic)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let leader = self
            .broker
            .transfer_leader(&req.topic, req.partition, req.to)
            .await
            .map_err(|e| self.via.status(&self.broker, e))?;
        Ok(Response::new(v1::TransferLeaderResponse { leader }))
    }

    async fn describe_cluster(
        &self,
        req: Request<v1::DescribeClusterRequest>,
    ) -> Result<Response<v1::DescribeClusterResponse>, Status> {
        self.allowed(&req, Operation::Describe, ResourceType::Cluster, CLUSTER)?;
        Ok(Response::new(v1::DescribeClusterResponse {
            brokers: brokers(&self.broker, self.via.name()),
            controller: self.broker.controller().leader(),
            node_id: self.broker.config.node_id,
            moving_partitions: moving_partitions(&self.broker),
        }))
    }

    async fn add_broker(
        &self,
        req: Request<v1::AddBrokerRequest>,
    ) -> Result<Response<v1::AddBrokerResponse>, Status> {
        self.allowed(
            &req,
            Operation::ClusterAdmin,
            ResourceType::Cluster,
            CLUSTER,
        )?;
        let r = req.into_inner();
        self.broker
            .add_broker(r.id, &r.peer_address)
            .await
            .map_err(|e| self.via.status(&self.broker, e))?;
        Ok(Response::new(v1::AddBrokerResponse {}))
    }

    async fn remove_broker(
        &self,
        req: Request<v1::RemoveBrokerRequest>,
    ) -> Result<Response<v1::RemoveBrokerResponse>, Status> {
        self.allowed(
            &req,
            Operation::ClusterAdmin,
            ResourceType::Cluster,
            CLUSTER,
        )?;
        let id = req.into_inner().id;
        self.broker
            .remove_broker(id)
            .await
            .map_err(|e| self.via.status(&self.broker, e))?;
        Ok(Response::new(v1::RemoveBrokerResponse {}))
    }

    async fn create_acl(
        &self,
        req: Request<v1::CreateAclRequest>,
    ) -> Result<Response<v1::CreateAclResponse>, Status> {
        self.allowed(&req, Operation::Alter, ResourceType::Cluster, CLUSTER)?;
        let binding = req
            .into_inner()
            .binding
            .ok_or_else(|| Status::invalid_argument("create ACL needs a binding"))?;
        let binding = super::acls::binding_from(binding)?;
        self.broker
            .create_acl(binding)
            .await
            .map_err(|e| self.via.status(&self.broker, e))?;
        Ok(Response::new(v1::CreateAclResponse {}))
    }

    async fn delete_acls(
        &self,
        req: Request<v1::DeleteAclsRequest>,
    ) -> Result<Response<v1::DeleteAclsResponse>, Status> {
        self.allowed(&req, Operation::Alter, ResourceType::Cluster, CLUSTER)?;
        let filter = super::acls::filter_from(req.into_inner().filter.unwrap_or_default())?;
        let deleted = self
            .broker
            .delete_acls(filter)
            .await
            .map_err(|e| self.via.status(&self.broker, e))?;
        Ok(Response::new(v1::DeleteAclsResponse {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn list_acls(
        &self,
        req: Request<v1::ListAclsRequest>,
    ) -> Result<Response<v1::ListAclsResponse>, Status> {
        self.allowed(&req, Operation::Describe, ResourceType::Cluster, CLUSTER)?;
        let filter = super::acls::filter_from(req.into_inner().filter.unwrap_or_default())?;
        let bindings = self
            .broker
            .acls(&filter)
            .iter()
            .map(super::acls::binding_to)
            .collect();
        Ok(Response::new(v1::ListAclsResponse { bindings }))
    }
}
