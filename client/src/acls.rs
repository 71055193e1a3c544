//! ACL administration over the `Admin` service (docs/security.md). Creating the same ACL twice is harmless,
//! so creates and deletes are retried like reads.

use ferry_protocol::v1::{
    AclBinding, AclFilter, CreateAclRequest, DeleteAclsRequest, ListAclsRequest,
};

use crate::channels::admin_client;
use crate::client::{Client, Route};
use crate::error::ClientError;

impl Client {
    /// Stores `binding` (fields as text: `allow`, `write`, `topic`, `prefix`, ...).
    pub async fn create_acl(&self, binding: AclBinding) -> Result<(), ClientError> {
        let timeout = self.config().request_timeout();
        self.call(Route::Any, true, timeout, |channel| {
            let binding = binding.clone();
            async move {
                admin_client(channel)
                    .create_acl(CreateAclRequest {
                        binding: Some(binding),
                    })
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Removes the ACLs `filter` names (empty fields match anything; at least one must be set); answers
    /// how many were removed.
    pub async fn delete_acls(&self, filter: AclFilter) -> Result<u32, ClientError> {
        let timeout = self.config().request_timeout();
        let r = self
            .call(Route::Any, true, timeout, |channel| {
                let filter = filter.clone();
                async move {
                    admin_client(channel)
                        .delete_acls(DeleteAclsRequest {
                            filter: Some(filter),
                        })
                        .await
                }
            })
            .await?;
        Ok(r.deleted)
    }

    /// The ACLs `filter` names.
    pub async fn list_acls(&self, filter: AclFilter) -> Result<Vec<AclBinding>, ClientError> {
        let timeout = self.config().request_timeout();
        let r = self
            .call(Route::Any, true, timeout, |channel| {
                let filter = filter.clone();
                async move {
                    admin_client(channel)
                        .list_acls(ListAclsRequest {
                            filter: Some(filter),
                        })
                        .await
                }
            })
            .await?;
        Ok(r.bindings)
    }
}
