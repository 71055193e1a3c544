//! Who sent a request, and whether it may do what it asks (docs/security.md).
//!
//! The principal comes from a bearer token (`authorization: Bearer TOKEN`: a signed JWT verified by
//! `jwt.rs` when keys are configured, else looked up by its SHA-256 among `auth_tokens`), else from the
//! client certificate (`User:` and its common name; a certificate of the cluster's CA naming a broker is
//! `Broker:N`, one of a client CA never is), else it is `User:ANONYMOUS`. A token that matches none is refused
//! (UNAUTHENTICATED) whether or not ACLs are enforced: a client sending one expects it to count. With
//! `authorization`, a request passes only if the ACLs allow it (acl.rs), or its principal is a superuser or
//! a broker; a refusal is PERMISSION_DENIED and names the principal, the operation and the resource, never
//! whether the resource exists (the check runs before any lookup).

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use super::conn::ConnInfo;
use crate::acl::{Operation, ResourceType};
use crate::broker::Broker;
use crate::config::AuthConfig;
use crate::quota::{Pacer, QuotaKind};
use crate::tls::Tls;

/// The principal of a request with neither token nor certificate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";
/// Longest bearer token accepted (bytes).
const TOKEN_BYTES_MAX: usize = 8 * 1024;
/// The resource name of the cluster in ACLs.
pub const CLUSTER: &str = "cluster";

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    /// A superuser or a broker: never asked.
    pub superuser: bool,
}

/// The authenticator and authorizer of one listener's services.
#[derive(Debug, Clone)]
pub struct Auth {
    config: Arc<AuthConfig>,
    tls: Option<Arc<Tls>>,
    /// Every principal's quota clocks, shared by the listener's connections.
    pacer: Arc<parking_lot::Mutex<Pacer>>,
}

impl Auth {
    pub fn new(config: AuthConfig, tls: Option<Arc<Tls>>) -> Self {
        Auth {
            config: Arc::new(config),
            tls,
            pacer: Arc::default(),
        }
    }

    /// How long to hold the answer to `p`'s request of `bytes` of `kind` (zero without a quota, or within
    /// it), counted in `ferry_quota_throttled_total` and `ferry_quota_throttle_ms_total` under the quota's
    /// principal (`*` for the default one, so labels stay bounded).
    pub fn throttle(&self, p: &Principal, kind: QuotaKind, bytes: u64) -> Duration {
        if p.name.starts_with("Broker:") {
            return Duration::ZERO;
        }
        let Some(rate) = self.config.quotas.rate(&p.name, kind) else {
            return Duration::ZERO;
        };
        let wait = self
            .pacer
            .lock()
            .charge(&p.name, kind, bytes, rate, std::time::Instant::now());
        if !wait.is_zero() {
            let own = self
                .config
                .quotas
                .rates
                .contains_key(&(p.name.clone(), kind));
            let label = if own { p.name.clone() } else { "*".to_owned() };
            let kind = match kind {
                QuotaKind::Publish => "publish",
                QuotaKind::Fetch => "fetch",
            };
            metrics::counter!("ferry_quota_throttled_total", "principal" => label.clone(), "kind" => kind)
                .increment(1);
            metrics::counter!("ferry_quota_throttle_ms_total", "principal" => label, "kind" => kind)
                .increment(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        }
        wait
    }

    /// Whether ACLs are enforced.
    pub fn enforced(&self) -> bool {
        self.config.authorization
    }

    /// The principal of `req`; an unknown or malformed token is UNAUTHENTICATED.
    pub fn principal<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let name = match req.metadata().get("authorization") {
            Some(v) => self.token_principal(v.as_bytes())?,
            None => self
                .cert_principal(req)
                .unwrap_or_else(|| ANONYMOUS.to_owned()),
        };
        let superuser = name.starts_with("Broker:") || self.config.superusers.contains(&name);
        Ok(Principal { name, superuser })
    }

    fn token_principal(&self, header: &[u8]) -> Result<String, Status> {
        let token = header.strip_prefix(b"Bearer ").ok_or_else(|| {
            Status::unauthenticated("the authorization header is not `Bearer TOKEN`")
        })?;
        if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
            return Err(Status::unauthenticated(format!(
                "a bearer token is 1-{TOKEN_BYTES_MAX} bytes"
            )));
        }
        if let (Some(jwt), Ok(text)) = (&self.config.jwt, std::str::from_utf8(token)) {
            if crate::jwt::Jwt::looks_like(text) {
                return jwt.verify(text).map_err(Status::unauthenticated);
            }
        }
        let digest: [u8; 32] = Sha256::digest(token).into();
        self.config
            .tokens
            .get(&digest)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }

    fn cert_principal<T>(&self, req: &Request<T>) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let info = req.extensions().get::<ConnInfo>()?;
        let cert = info.peer_cert.as_ref()?;
        // Only the cluster's CA makes brokers: a client CA's certificate naming `broker-1` is a user.
        if let (true, [id]) = (info.cluster_cert, &tls.peer_names.ids_in(cert)[..]) {
            return Some(format!("Broker:{id}"));
        }
        cert.holder().map(|n| format!("User:{n}"))
    }

    /// Whether `p` may do `op` on the resource `kind` named `name`.
    pub fn may(
        &self,
        broker: &Broker,
        p: &Principal,
        op: Operation,
        kind: ResourceType,
        name: &str,
    ) -> bool {
        !self.config.authorization || p.superuser || broker.acls_allow(&p.name, op, kind, name)
    }

    /// [`Auth::may`], as PERMISSION_DENIED naming what was refused.
    pub fn check(
        &self,
        broker: &Broker,
        p: &Principal,
        op: Operation,
        kind: ResourceType,
        name: &str,
    ) -> Result<(), Status> {
        if self.may(broker, p, op, kind, name) {
            return Ok(());
        }
        Err(denied(p, op, kind, name))
    }

    /// Whether `p` may start an idempotent producer: `write` on `producer-id`, or on some topic.
    pub fn check_producer_id(&self, broker: &Broker, p: &Principal) -> Result<(), Status> {
        if self.may(broker, p, Operation::Write, ResourceType::ProducerId, "*")
            || broker.acls_allow_some_write(&p.name)
        {
            return Ok(());
        }
        Err(denied(p, Operation::Write, ResourceType::ProducerId, "*"))
    }
}

fn denied(p: &Principal, op: Operation, kind: ResourceType, name: &str) -> Status {
    let op = serde_json::to_value(op).ok();
    let kind = serde_json::to_value(kind).ok();
    let (op, kind) = (
        op.as_ref().and_then(|v| v.as_str()).unwrap_or("?"),
        kind.as_ref().and_then(|v| v.as_str()).unwrap_or("?"),
    );
    Status::permission_denied(format!("{} may not {op} {kind} `{name}`", p.name))
}
