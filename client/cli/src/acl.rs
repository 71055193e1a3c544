//! `ferry acl create|list|delete` (docs/cli.md, docs/security.md) and `ferry token hash`.

use std::io::{Read, Write};

use anyhow::{bail, Result};
use ferry_client::v1::{AclBinding, AclFilter};
use ferry_client::Client;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::args::{AclCommand, OutputFormat, Resource};
use crate::output::{self, Table};

impl Resource {
    /// (resource type, pattern) as the wire has them; empty when not given.
    fn target(&self) -> (String, String) {
        if let Some(t) = &self.topic {
            ("topic".into(), t.clone())
        } else if let Some(g) = &self.group {
            ("group".into(), g.clone())
        } else if self.cluster {
            ("cluster".into(), "cluster".into())
        } else if self.producer_ids {
            ("producer-id".into(), "*".into())
        } else {
            (String::new(), String::new())
        }
    }

    fn pattern_type(&self) -> String {
        if self.prefix { "prefix" } else { "literal" }.into()
    }

    fn filter(&self) -> AclFilter {
        let (resource_type, pattern) = self.target();
        AclFilter {
            principal: self.principal.clone().unwrap_or_default(),
            resource_type,
            pattern_type: if pattern.is_empty() {
                String::new()
            } else {
                self.pattern_type()
            },
            pattern,
            ..AclFilter::default()
        }
    }
}

/// One ACL as `-o json` prints it (one object per line).
#[derive(Serialize)]
struct AclJson<'a> {
    principal: &'a str,
    permission: &'a str,
    operation: &'a str,
    resource_type: &'a str,
    pattern: &'a str,
    pattern_type: &'a str,
}

fn json(b: &AclBinding) -> AclJson<'_> {
    AclJson {
        principal: &b.principal,
        permission: &b.permission,
        operation: &b.operation,
        resource_type: &b.resource_type,
        pattern: &b.pattern,
        pattern_type: &b.pattern_type,
    }
}

/// Runs one ACL command.
pub async fn run(client: &Client, command: AclCommand, format: OutputFormat) -> Result<()> {
    let mut out = output::stdout();
    match command {
        AclCommand::Create(a) => {
            let Some(principal) = a.resource.principal.clone() else {
                bail!("--principal is required (User:NAME, or * for everyone)");
            };
            let (resource_type, pattern) = a.resource.target();
            if resource_type.is_empty() {
                bail!("name a resource: --topic NAME, --group NAME, --cluster or --producer-ids");
            }
            for operation in &a.operations {
                let b = AclBinding {
                    principal: principal.clone(),
                    permission: if a.deny { "deny" } else { "allow" }.into(),
                    operation: operation.trim().to_owned(),
                    resource_type: resource_type.clone(),
                    pattern: pattern.clone(),
                    pattern_type: a.resource.pattern_type(),
                };
                client.create_acl(b.clone()).await?;
                match format {
                    OutputFormat::Text => writeln!(out, "created ACL: {}", text(&b))?,
                    OutputFormat::Json => output::json_line(&mut out, &json(&b))?,
                }
            }
        }
        AclCommand::List(r) => {
            let list = client.list_acls(r.filter()).await?;
            match format {
                OutputFormat::Text => {
                    let mut t = Table::new(&[
                        "PRINCIPAL",
                        "PERMISSION",
                        "OPERATION",
                        "RESOURCE",
                        "PATTERN",
                        "MATCH",
                    ]);
                    for b in &list {
                        t.row(vec![
                            b.principal.clone(),
                            b.permission.clone(),
                            b.operation.clone(),
                            b.resource_type.clone(),
                            b.pattern.clone(),
                            b.pattern_type.clone(),
                        ]);
                    }
                    t.write(&mut out)?;
                }
                OutputFormat::Json => {
                    for b in &list {
                        output::json_line(&mut out, &json(b))?;
                    }
                }
            }
        }
        AclCommand::Delete(r) => {
            let f = r.filter();
            if f == AclFilter::default() {
                bail!("name what to delete: --principal, --topic, --group, --cluster or --producer-ids");
            }
            let deleted = client.delete_acls(f).await?;
            match format {
                OutputFormat::Text => writeln!(out, "deleted {deleted} ACLs")?,
                OutputFormat::Json => {
                    output::json_line(&mut out, &serde_json::json!({ "deleted": deleted }))?
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn text(b: &AclBinding) -> String {
    format!(
        "{} {} {} on {} {} ({})",
        b.principal, b.permission, b.operation, b.resource_type, b.pattern, b.pattern_type
    )
}

/// `ferry token hash`: the `sha256:HEX` a broker's `auth_tokens` holds for the token on stdin (its first
/// line; the token itself is never written anywhere).
pub fn hash_token() -> Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut input)?;
    let token = input.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        bail!("no token on stdin (give it on the first line)");
    }
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("sha256:{hex}");
    Ok(())
}
