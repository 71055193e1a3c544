//! ACLs on the wire: `ferry.v1.AclBinding` and `AclFilter` carry every field as text (`allow`, `write`,
//! `topic`, `prefix`, as `ferry acl` prints them); a field that is not one of its words is INVALID_ARGUMENT
//! naming the field and the words it takes.

use ferry_protocol::v1;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::acl::{AclBinding, AclFilter};

const PERMISSIONS: &str = "allow, deny";
const OPERATIONS: &str = "read, write, create, delete, alter, describe, cluster-admin";
const RESOURCE_TYPES: &str = "topic, group, cluster, producer-id";
const PATTERN_TYPES: &str = "literal, prefix";

/// One word of a field, as its enum.
fn word<T: DeserializeOwned>(field: &str, words: &str, v: &str) -> Result<T, Status> {
    serde_json::from_value(serde_json::Value::String(v.to_owned()))
        .map_err(|_| Status::invalid_argument(format!("ACL {field} `{v}` is not one of: {words}")))
}

/// An empty field matches anything.
fn optional<T: DeserializeOwned>(field: &str, words: &str, v: &str) -> Result<Option<T>, Status> {
    (!v.is_empty()).then(|| word(field, words, v)).transpose()
}

fn text(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A binding from the wire, checked (acl.rs bounds).
pub fn binding_from(b: v1::AclBinding) -> Result<AclBinding, Status> {
    let pattern_type = if b.pattern_type.is_empty() {
        crate::acl::PatternType::Literal
    } else {
        word("pattern_type", PATTERN_TYPES, &b.pattern_type)?
    };
    let binding = AclBinding {
        principal: b.principal,
        permission: word("permission", PERMISSIONS, &b.permission)?,
        operation: word("operation", OPERATIONS, &b.operation)?,
        resource_type: word("resource_type", RESOURCE_TYPES, &b.resource_type)?,
        pattern: b.pattern,
        pattern_type,
    };
    binding.check().map_err(Status::invalid_argument)?;
    Ok(binding)
}

/// A filter from the wire.
pub fn filter_from(f: v1::AclFilter) -> Result<AclFilter, Status> {
    Ok(AclFilter {
        principal: (!f.principal.is_empty()).then_some(f.principal),
        permission: optional("permission", PERMISSIONS, &f.permission)?,
        operation: optional("operation", OPERATIONS, &f.operation)?,
        resource_type: optional("resource_type", RESOURCE_TYPES, &f.resource_type)?,
        pattern: (!f.pattern.is_empty()).then_some(f.pattern),
        pattern_type: optional("pattern_type", PATTERN_TYPES, &f.pattern_type)?,
    })
}

/// A binding for the wire.
pub fn binding_to(b: &AclBinding) -> v1::AclBinding {
    v1::AclBinding {
        principal: b.principal.clone(),
        permission: text(b.permission),
        operation: text(b.operation),
        resource_type: text(b.resource_type),
        pattern: b.pattern.clone(),
        pattern_type: text(b.pattern_type),
    }
}
