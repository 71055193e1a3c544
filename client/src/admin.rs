//! Topic and cluster administration over the `Admin` service. Topic changes go to the controller (any
//! broker when it is unknown) and are sent once: repeating a create after a lost answer would turn success
//! into "already exists". Reads are retried like any other safe request.

use ferry_protocol::limits::TOPIC_PARTITIONS_MAX;
use ferry_protocol::topic::validate_user_topic_name;
use ferry_protocol::v1::{
    CreateTopicRequest, DeleteTopicRequest, DescribeClusterRequest, DescribeClusterResponse,
    DescribeTopicRequest, ListTopicsRequest, TopicConfig, TopicInfo,
};

use crate::channels::admin_client;
use crate::client::{Client, Route};
use crate::error::ClientError;

impl Client {
    /// Creates `name` with `partitions` partitions, each on `replicas` brokers (0: the broker's default),
    /// with the broker's default settings.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replicas: u32,
    ) -> Result<TopicInfo, ClientError> {
        self.create_topic_with_config(name, partitions, replicas, TopicConfig::default())
            .await
    }

    /// Creates `name` like [`Client::create_topic`], with per-topic settings (zero fields: broker default).
    pub async fn create_topic_with_config(
        &self,
        name: &str,
        partitions: u32,
        replicas: u32,
        config: TopicConfig,
    ) -> Result<TopicInfo, ClientError> {
        validate_user_topic_name(name).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        if partitions == 0 || partitions > TOPIC_PARTITIONS_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "a topic has 1 to {TOPIC_PARTITIONS_MAX} partitions, not {partitions}"
            )));
        }
        let request = CreateTopicRequest {
            name: name.to_owned(),
            partitions,
            replicas,
            config: Some(config),
        };
        let timeout = self.config().request_timeout();
        let info = self
            .call(Route::Controller, false, timeout, |channel| {
                let request = request.clone();
                async move { admin_client(channel).create_topic(request).await }
            })
            .await?;
        // The next send must not route by a stale (absent) entry.
        self.forget_topic(name);
        Ok(info)
    }

    /// Deletes `name` and all its records.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicRequest {
            name: name.to_owned(),
        };
        let timeout = self.config().request_timeout();
        self.call(Route::Controller, false, timeout, |channel| {
            let request = request.clone();
            async move { admin_client(channel).delete_topic(request).await }
        })
        .await
        .map_err(|e| unknown_topic_if_not_found(e, name))?;
        self.forget_topic(name);
        Ok(())
    }

    /// Moves the leadership of one partition to replica `to`; answers the leader afterwards. Sent to the
    /// partition's current leader (following redirects).
    pub async fn transfer_leader(
        &self,
        topic: &str,
        partition: u32,
        to: u64,
    ) -> Result<u64, ClientError> {
        let request = ferry_protocol::v1::TransferLeaderRequest {
            topic: topic.to_owned(),
            partition,
            to,
        };
        let timeout = self.config().request_timeout();
        let route = Route::Leader { topic, partition };
        let resp = self
            .call(route, true, timeout, |channel| {
                let request = request.clone();
                async move { admin_client(channel).transfer_leader(request).await }
            })
            .await
            .map_err(|e| unknown_topic_if_not_found(e, topic))?;
        Ok(resp.leader)
    }

    /// Every topic, with partition details.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        let timeout = self.config().request_timeout();
        let response = self
            .call(Route::Any, true, timeout, |channel| async move {
                admin_client(channel)
                    .list_topics(ListTopicsRequest {})
                    .await
            })
            .await?;
        Ok(response.topics)
    }

    /// One topic: settings and, per partition, leader, replicas, in-sync set and offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        let request = DescribeTopicRequest {
            name: name.to_owned(),
            local_only: false,
        };
        let timeout = self.config().request_timeout();
        self.call(Route::Any, true, timeout, |channel| {
            let request = request.clone();
            async move { admin_client(channel).describe_topic(request).await }
        })
        .await
        .map_err(|e| unknown_topic_if_not_found(e, name))
    }

    /// Adds broker `id` (its peer listener at `peer_address`) to the cluster.
    pub async fn add_broker(&self, id: u64, peer_address: &str) -> Result<(), ClientError> {
        let request = ferry_protocol::v1::AddBrokerRequest {
            id,
            peer_address: peer_address.to_owned(),
        };
        let timeout = self.config().request_timeout();
        self.call(Route::Any, true, timeout, |channel| {
            let request = request.clone();
            async move { admin_client(channel).add_broker(request).await }
        })
        .await?;
        Ok(())
    }

    /// Removes broker `id` from the cluster (its partitions move to the others).
    pub async fn remove_broker(&self, id: u64) -> Result<(), ClientError> {
        let request = ferry_protocol::v1::RemoveBrokerRequest { id };
        let timeout = self.config().request_timeout();
        self.call(Route::Any, true, timeout, |channel| async move {
            admin_client(channel).remove_broker(request).await
        })
        .await?;
        Ok(())
    }

    /// The brokers, whether each is up, and the controller, as the answering broker sees them.
    pub async fn describe_cluster(&self) -> Result<DescribeClusterResponse, ClientError> {
        let timeout = self.config().request_timeout();
        self.call(Route::Any, true, timeout, |channel| async move {
            admin_client(channel)
                .describe_cluster(DescribeClusterRequest {})
                .await
        })
        .await
    }
}

/// A `NOT_FOUND` answer to a request about one topic can only mean that topic.
fn unknown_topic_if_not_found(err: ClientError, topic: &str) -> ClientError {
    match err.code() {
        Some(tonic::Code::NotFound) => ClientError::UnknownTopic(topic.to_owned()),
        _ => err,
    }
}
