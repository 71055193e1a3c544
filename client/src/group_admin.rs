//! The group calls a member and an administrator make at a group's coordinator: heartbeat, commit,
//! describe, delete, list.

use std::collections::BTreeMap;

use ferry_protocol::v1::{
    CommitOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest, DescribeGroupResponse,
    GroupHeartbeatRequest, GroupHeartbeatResponse, ListGroupsRequest,
};

use crate::channels::ferry_client;
use crate::client::{Client, Route};
use crate::error::ClientError;

impl Client {
    /// One heartbeat of a group member, at the group's coordinator.
    pub async fn group_heartbeat(
        &self,
        request: GroupHeartbeatRequest,
    ) -> Result<GroupHeartbeatResponse, ClientError> {
        let timeout = self.config().request_timeout();
        let group = request.group.clone();
        self.call(Route::Group(&group), true, timeout, |channel| {
            let request = request.clone();
            async move { ferry_client(channel).group_heartbeat(request).await }
        })
        .await
    }

    /// Commits offsets at the group's coordinator (an empty member id: an admin reset of an empty group).
    pub async fn commit_offsets(&self, request: CommitOffsetsRequest) -> Result<(), ClientError> {
        let timeout = self.config().request_timeout();
        let group = request.group.clone();
        self.call(Route::Group(&group), true, timeout, |channel| {
            let request = request.clone();
            async move { ferry_client(channel).commit_offsets(request).await }
        })
        .await?;
        Ok(())
    }

    /// Members, assignment, committed and end offsets and lag of a group, from its coordinator.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        let timeout = self.config().request_timeout();
        let request = DescribeGroupRequest {
            group: group.to_owned(),
        };
        self.call(Route::Group(group), true, timeout, |channel| {
            let request = request.clone();
            async move { ferry_client(channel).describe_group(request).await }
        })
        .await
    }

    /// Deletes a group without live members, with its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let timeout = self.config().request_timeout();
        let request = DeleteGroupRequest {
            group: group.to_owned(),
        };
        self.call(Route::Group(group), true, timeout, |channel| {
            let request = request.clone();
            async move { ferry_client(channel).delete_group(request).await }
        })
        .await?;
        Ok(())
    }

    /// Every group, from every broker (each lists those it coordinates).
    pub async fn list_groups(&self) -> Result<Vec<String>, ClientError> {
        let metadata = self.metadata(&[]).await?;
        let mut all = BTreeMap::new();
        for b in metadata.brokers.iter().filter(|b| !b.address.is_empty()) {
            let channel = self.channel_to(&b.address)?;
            let request = tonic::Request::new(ListGroupsRequest {});
            let answer = tokio::time::timeout(
                self.config().request_timeout(),
                ferry_client(channel).list_groups(request),
            )
            .await;
            match answer {
                Ok(Ok(r)) => {
                    for g in r.into_inner().groups {
                        all.insert(g, ());
                    }
                }
                Ok(Err(status)) => return Err(ClientError::from(status)),
                Err(_) => {
                    return Err(ClientError::Status {
                        code: tonic::Code::Unavailable,
                        message: format!("broker {} did not list its groups in time", b.id),
                    })
                }
            }
        }
        Ok(all.into_keys().collect())
    }
}
