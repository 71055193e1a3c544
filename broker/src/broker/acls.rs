//! ACL operations: bindings created and deleted through the controller, read from this broker's metadata.

use crate::acl::{AclBinding, AclFilter};
use crate::metadata::Command;

use super::{Broker, BrokerError};

impl Broker {
    /// Stores `binding`; answers once this broker's metadata holds it.
    pub async fn create_acl(&self, binding: AclBinding) -> Result<(), BrokerError> {
        binding.check().map_err(BrokerError::Invalid)?;
        let want = binding.clone();
        self.propose_command(&Command::CreateAcl { binding }, move |m| {
            m.acls.contains(&want)
        })
        .await
    }

    /// Removes the bindings `filter` names (at least one field: an empty filter would remove every ACL);
    /// answers how many there were, once this broker's metadata holds none of them.
    pub async fn delete_acls(&self, filter: AclFilter) -> Result<usize, BrokerError> {
        if filter == AclFilter::default() {
            return Err(BrokerError::Invalid(
                "name at least one field of the ACLs to delete (a principal, a resource, ...)"
                    .into(),
            ));
        }
        let before = self.acls(&filter).len();
        let f = filter.clone();
        self.propose_command(&Command::DeleteAcls { filter }, move |m| {
            m.acls.list(&f).is_empty()
        })
        .await?;
        Ok(before)
    }

    /// The bindings `filter` names, from this broker's metadata.
    pub fn acls(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.metadata.state.read().acls.list(filter)
    }
}

impl Broker {
    /// Whether this broker's ACLs allow `principal` to do `op` on `kind` `name`.
    pub fn acls_allow(
        &self,
        principal: &str,
        op: crate::acl::Operation,
        kind: crate::acl::ResourceType,
        name: &str,
    ) -> bool {
        self.metadata
            .state
            .read()
            .acls
            .allows(principal, op, kind, name)
    }

    /// Whether this broker's ACLs allow `principal` to write to some topic.
    pub fn acls_allow_some_write(&self, principal: &str) -> bool {
        self.metadata.state.read().acls.allows_some_write(principal)
    }
}
