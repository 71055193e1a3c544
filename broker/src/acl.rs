//! Access control lists (core: no I/O): who may do what to which resource, and the decision for one
//! request. Bindings live in the controller's metadata (`Command::CreateAcl`, `Command::DeleteAcls`), so
//! every broker decides from the same list.
//!
//! A binding is principal × allow/deny × operation × resource type × name pattern (literal or prefix).
//! Deny wins over allow; with no matching allow, a request is denied. An allow of read, write, delete or
//! alter implies describe (as in Kafka; a deny refuses only the operation it names); `cluster-admin` on the cluster resource allows every operation on every
//! resource. Superusers (configured, and brokers) are never asked.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Most bindings the cluster holds: each is checked per request.
pub const ACLS_MAX: usize = 10_000;
/// Longest principal or resource pattern (bytes).
pub const ACL_FIELD_BYTES_MAX: usize = 255;
/// The principal `*` matches every principal.
pub const ANY_PRINCIPAL: &str = "*";

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAdmin,
}

/// What a request does it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceType {
    Topic,
    Group,
    /// The cluster itself (name `cluster`): brokers, ACLs, topic creation for any name.
    Cluster,
    /// Idempotent producer ids (name `*`): `InitProducer`.
    ProducerId,
}

/// How a binding's name matches a resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternType {
    /// The same name; `*` matches every name.
    Literal,
    /// Every name starting with the pattern.
    Prefix,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    Allow,
    Deny,
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    /// `User:NAME`, or `*` for everyone.
    pub principal: String,
    pub permission: Permission,
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub pattern: String,
    pub pattern_type: PatternType,
}

impl AclBinding {
    /// Why the binding cannot be stored (bounds, an empty principal or pattern).
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [("principal", &self.principal), ("pattern", &self.pattern)] {
            if v.is_empty() || v.len() > ACL_FIELD_BYTES_MAX {
                return Err(format!("{what} must be 1-{ACL_FIELD_BYTES_MAX} bytes"));
            }
            if v.chars().any(char::is_control) {
                return Err(format!("{what} holds a control character"));
            }
        }
        if self.principal != ANY_PRINCIPAL && !self.principal.contains(':') {
            return Err(format!(
                "principal `{}` is not TYPE:NAME (e.g. User:orders-service) or *",
                self.principal
            ));
        }
        Ok(())
    }

    fn matches_principal(&self, principal: &str) -> bool {
        self.principal == ANY_PRINCIPAL || self.principal == principal
    }

    fn matches_name(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.pattern == "*" || self.pattern == name,
            PatternType::Prefix => name.starts_with(&self.pattern),
        }
    }

    /// Whether the binding's operation covers `op` (read, write, delete and alter imply describe).
    fn covers(&self, op: Operation) -> bool {
        self.operation == op
            || (op == Operation::Describe
                && matches!(
                    self.operation,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
    }
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {:?} on {:?} {} ({:?})",
            self.principal,
            self.permission,
            self.operation,
            self.resource_type,
            self.pattern,
            self.pattern_type
        )
    }
}

/// Which bindings a delete or list names: every field given must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub principal: Option<String>,
    pub permission: Option<Permission>,
    pub operation: Option<Operation>,
    pub resource_type: Option<ResourceType>,
    pub pattern: Option<String>,
    pub pattern_type: Option<PatternType>,
}

impl AclFilter {
    /// Whether `b` is one the filter names.
    pub fn matches(&self, b: &AclBinding) -> bool {
        self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.permission.is_none_or(|p| p == b.permission)
            && self.operation.is_none_or(|o| o == b.operation)
            && self.resource_type.is_none_or(|r| r == b.resource_type)
            && self.pattern.as_ref().is_none_or(|p| *p == b.pattern)
            && self.pattern_type.is_none_or(|t| t == b.pattern_type)
    }
}

/// The cluster's bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acls {
    bindings: BTreeSet<AclBinding>,
}

impl Acls {
    /// Adds a binding (a duplicate changes nothing); past [`ACLS_MAX`] it is refused.
    pub fn add(&mut self, b: AclBinding) -> Result<(), String> {
        b.check()?;
        if self.bindings.len() >= ACLS_MAX && !self.bindings.contains(&b) {
            return Err(format!("the cluster holds {ACLS_MAX} ACLs already"));
        }
        self.bindings.insert(b);
        Ok(())
    }

    /// Removes the bindings `filter` names; returns how many.
    pub fn remove(&mut self, filter: &AclFilter) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|b| !filter.matches(b));
        before - self.bindings.len()
    }

    /// Whether `b` is stored.
    pub fn contains(&self, b: &AclBinding) -> bool {
        self.bindings.contains(b)
    }

    /// The bindings `filter` names.
    pub fn list(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.bindings
            .iter()
            .filter(|b| filter.matches(b))
            .cloned()
            .collect()
    }

    /// Whether `principal` may do `op` on the resource `kind` named `name`: a matching deny refuses, then a
    /// matching allow (or cluster-admin on the cluster) permits; nothing matching refuses.
    pub fn allows(&self, principal: &str, op: Operation, kind: ResourceType, name: &str) -> bool {
        let mut allowed = false;
        for b in self
            .bindings
            .iter()
            .filter(|b| b.matches_principal(principal))
        {
            let admin =
                b.resource_type == ResourceType::Cluster && b.operation == Operation::ClusterAdmin;
            // An allow of read, write, delete or alter implies describe; a deny refuses only what it names.
            let op_matches = match b.permission {
                Permission::Allow => b.covers(op),
                Permission::Deny => b.operation == op,
            };
            let direct = b.resource_type == kind && op_matches && b.matches_name(name);
            if !(direct || admin) {
                continue;
            }
            match b.permission {
                Permission::Deny if direct => return false,
                Permission::Deny => {}
                Permission::Allow => allowed = true,
            }
        }
        allowed
    }

    /// Whether `principal` may write to at least one topic (what an idempotent producer's `InitProducer`
    /// needs, besides an explicit `write` on `producer-id`).
    pub fn allows_some_write(&self, principal: &str) -> bool {
        self.bindings.iter().any(|b| {
            b.matches_principal(principal)
                && b.permission == Permission::Allow
                && ((b.resource_type == ResourceType::Topic && b.operation == Operation::Write)
                    || (b.resource_type == ResourceType::Cluster
                        && b.operation == Operation::ClusterAdmin))
        })
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(p: &str, perm: Permission, op: Operation, pattern: &str, t: PatternType) -> AclBinding {
        AclBinding {
            principal: p.into(),
            permission: perm,
            operation: op,
            resource_type: ResourceType::Topic,
            pattern: pattern.into(),
            pattern_type: t,
        }
    }

    #[test]
    fn prefixes_literals_and_deny_over_allow() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        let mut acls = Acls::default();
        acls.add(b("User:orders", Allow, Write, "orders.", Prefix))
            .unwrap();
        acls.add(b("User:orders", Deny, Write, "orders.audit", Literal))
            .unwrap();
        acls.add(b("*", Allow, Read, "public", Literal)).unwrap();
        let t = ResourceType::Topic;
        assert!(acls.allows("User:orders", Write, t, "orders.created"));
        assert!(
            acls.allows("User:orders", Describe, t, "orders.created"),
            "write implies describe"
        );
        assert!(
            !acls.allows("User:orders", Read, t, "orders.created"),
            "write is not read"
        );
        assert!(!acls.allows("User:orders", Write, t, "payments.settled"));
        assert!(
            !acls.allows("User:orders", Write, t, "orders"),
            "the prefix is `orders.`"
        );
        assert!(
            !acls.allows("User:orders", Write, t, "orders.audit"),
            "deny wins"
        );
        assert!(
            acls.allows("User:orders", Describe, t, "orders.audit"),
            "a deny of write does not deny describe"
        );
        assert!(!acls.allows("User:orders", Create, t, "orders.new"));
        assert!(acls.allows("User:anyone", Read, t, "public"));
        assert!(!acls.allows("User:anyone", Read, ResourceType::Group, "public"));
        assert!(acls.allows_some_write("User:orders"));
        assert!(!acls.allows_some_write("User:anyone"));

        // cluster-admin on the cluster allows everything, but a direct deny still wins.
        acls.add(AclBinding {
            principal: "User:ops".into(),
            permission: Allow,
            operation: ClusterAdmin,
            resource_type: ResourceType::Cluster,
            pattern: "cluster".into(),
            pattern_type: Literal,
        })
        .unwrap();
        acls.add(b("User:ops", Deny, Delete, "payments.", Prefix))
            .unwrap();
        assert!(acls.allows("User:ops", Create, t, "anything"));
        assert!(!acls.allows("User:ops", Delete, t, "payments.settled"));

        let removed = acls.remove(&AclFilter {
            principal: Some("User:ops".into()),
            ..AclFilter::default()
        });
        assert_eq!(removed, 2);
        assert!(!acls.allows("User:ops", Create, t, "anything"));
    }

    #[test]
    fn the_stored_form_is_the_one_docs_design_md_shows() {
        let b = b(
            "User:orders",
            Permission::Allow,
            Operation::Write,
            "orders.",
            PatternType::Prefix,
        );
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"principal":"User:orders","permission":"allow","operation":"write","resource_type":"topic","pattern":"orders.","pattern_type":"prefix"}"#
        );
        let f = AclFilter {
            principal: Some("User:orders".into()),
            ..AclFilter::default()
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"principal":"User:orders","permission":null,"operation":null,"resource_type":null,"pattern":null,"pattern_type":null}"#
        );
    }

    #[test]
    fn bindings_are_bounded_and_checked() {
        let ok = b(
            "User:a",
            Permission::Allow,
            Operation::Read,
            "t",
            PatternType::Literal,
        );
        assert!(ok.check().is_ok());
        for bad in [
            AclBinding {
                principal: String::new(),
                ..ok.clone()
            },
            AclBinding {
                principal: "alice".into(),
                ..ok.clone()
            },
            AclBinding {
                pattern: String::new(),
                ..ok.clone()
            },
            AclBinding {
                pattern: "x".repeat(ACL_FIELD_BYTES_MAX + 1),
                ..ok.clone()
            },
            AclBinding {
                pattern: "a\nb".into(),
                ..ok.clone()
            },
        ] {
            assert!(Acls::default().add(bad.clone()).is_err(), "{bad:?}");
        }
    }
}
