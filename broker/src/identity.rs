//! A broker's identity, kept in `ferry-identity` at the root of its data dir: the node id the data dir
//! belongs to, the incarnation of the data dir (a random id drawn when the data dir is first used) and the
//! id of the cluster it belongs to, once known. Raft needs every voter to remember its term, vote and log:
//! a broker whose data dir was wiped comes back under the same node id having forgotten them, and a data
//! dir of another cluster holds state this cluster never agreed to. The identity lets a broker tell (and
//! peers check on every Raft batch) which of these it is; the judgements live here, pure, and the Hello
//! round that gathers the answers in `broker::identify`.
//!
//! ```text
//! # Ferry broker identity (docs/operations.md, "Identity"): never copy it to another broker
//! node_id = 2
//! incarnation = "9f0c3b1d2e4a5b6c"
//! cluster_id = "4be1d0c2f7a94e8b9d3c5a6e1f2b7c80"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::replica::Replica;
use crate::storage::{Disk, StorageError};

/// File name at the data dir's root.
pub const FILE_NAME: &str = "ferry-identity";
/// Largest identity file read (bytes): a few short lines.
const FILE_BYTES_MAX: u64 = 4096;
/// Longest cluster id accepted (bytes): minted ids are 32 hex digits.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// The directory of the controller's log: a data dir holding it has taken part in a cluster.
const CONTROLLER_DIR: &str = "__cluster";

/// Why an identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path}: {why}")]
    Unreadable { path: PathBuf, why: String },
    #[error(
        "{path}: this data dir belongs to broker {found}, not to broker {expected}: start broker {found} on \
         it, or broker {expected} on its own data dir (docs/operations.md, \"Identity\")"
    )]
    OtherBroker {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "{path}: this data dir has an identity but no controller state ({CONTROLLER_DIR}/ is missing): part \
         of it was deleted, and a broker that forgot its Raft state must not vote; rebuild the broker \
         (docs/operations.md, \"A broker lost its data dir\")"
    )]
    StateMissing { path: PathBuf },
    #[error(
        "this data dir belongs to cluster {found}, but the cluster it is in is {known}: it is another \
         cluster's data dir (docs/operations.md, \"Identity\")"
    )]
    OtherCluster { found: String, known: String },
}

/// What `ferry-identity` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    node_id: u64,
    incarnation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
}

/// This broker's identity, shared by the peer network (which stamps it on every batch), the peer service
/// (which checks others' and answers Hello) and the broker (which learns the cluster id).
#[derive(Debug)]
pub struct Identity {
    pub node_id: u64,
    /// Never 0 (0 stands for "no incarnation" on the wire, from brokers older than identities).
    pub incarnation: u64,
    cluster_id: OnceLock<String>,
    /// The data dir is new and the broker has not yet been told that the cluster does not know its node
    /// id: it holds no state, and writes none, until then.
    fresh: AtomicBool,
    /// The controller replica while it runs and has stored no entry (let go once it has: only then can
    /// this broker be pristine, see [`Identity::is_pristine`]).
    empty_controller: parking_lot::Mutex<Option<Replica>>,
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

/// Checks a cluster id read from a peer or a controller command: printable, short.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > CLUSTER_ID_BYTES_MAX {
        return Err(format!(
            "a cluster id has 1 to {CLUSTER_ID_BYTES_MAX} bytes, not {}",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("a cluster id is letters, digits and '-': {id:?}"));
    }
    Ok(())
}

/// A new cluster id: 128 random bits as 32 hex digits.
pub fn mint_cluster_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn new_incarnation() -> u64 {
    loop {
        let n = rand::random::<u64>();
        if n != 0 {
            return n;
        }
    }
}

impl Identity {
    /// Creates the data dir `dir` if needed, checks its storage format, and reads its identity for broker
    /// `node_id` (what a broker does first).
    pub fn open_data_dir(
        disk: Arc<dyn Disk>,
        dir: &Path,
        node_id: u64,
    ) -> Result<Arc<Identity>, IdentityError> {
        crate::storage::format::check_or_create(disk.as_ref(), dir)?;
        Identity::open(disk, dir, node_id)
    }

    /// Reads the identity of the data dir `dir` (which exists) for broker `node_id`. A data dir without the
    /// file is new (fresh: nothing is written until [`Identity::settle`]) unless it holds a controller log,
    /// written by a version older than identities: that one is given an incarnation now.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        node_id: u64,
    ) -> Result<Arc<Identity>, IdentityError> {
        let path = dir.join(FILE_NAME);
        let names = disk.list(dir).map_err(|e| StorageError::io(dir, e))?;
        let has_state = names.iter().any(|n| n == CONTROLLER_DIR);
        let identity = |incarnation, cluster_id: Option<String>, fresh| Identity {
            node_id,
            incarnation,
            cluster_id: cluster_id.map(OnceLock::from).unwrap_or_default(),
            fresh: AtomicBool::new(fresh),
            empty_controller: parking_lot::Mutex::new(None),
            disk: disk.clone(),
            dir: dir.to_owned(),
        };
        if !names.iter().any(|n| n == FILE_NAME) {
            let id = identity(new_incarnation(), None, !has_state);
            if has_state {
                tracing::warn!(
                    incarnation = %format!("{:016x}", id.incarnation),
                    "this data dir predates identities: it is given one now"
                );
                id.write()?;
            }
            return Ok(Arc::new(id));
        }
        let file = read_file(disk.as_ref(), &path)?;
        if file.node_id != node_id {
            return Err(IdentityError::OtherBroker {
                path,
                found: file.node_id,
                expected: node_id,
            });
        }
        if !has_state {
            return Err(IdentityError::StateMissing { path });
        }
        let unreadable = |why: String| IdentityError::Unreadable {
            path: path.clone(),
            why,
        };
        let incarnation = u64::from_str_radix(&file.incarnation, 16)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| unreadable(format!("bad incarnation {:?}", file.incarnation)))?;
        if let Some(c) = &file.cluster_id {
            check_cluster_id(c).map_err(unreadable)?;
        }
        Ok(Arc::new(identity(incarnation, file.cluster_id, false)))
    }

    /// The disk the data dir is on.
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    /// The cluster id, once known.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.get().map(String::as_str)
    }

    /// True while a new data dir waits to learn that the cluster does not know this node id.
    pub fn is_fresh(&self) -> bool {
        self.fresh.load(Ordering::Acquire)
    }

    /// Holds nothing that matters to Raft yet: a new data dir waiting for the check, or one whose controller
    /// has never stored an entry. A broker elected controller leader stores an entry at once, so when every
    /// other voter is pristine no election this broker could have voted in ever succeeded: a broker that
    /// passed the first-start check before the others asked still counts as new to them.
    pub fn is_pristine(&self) -> bool {
        if self.is_fresh() {
            return true;
        }
        let mut c = self.empty_controller.lock();
        if c.as_ref().is_some_and(|r| r.last_raft_index() > 0) {
            *c = None;
        }
        c.is_some()
    }

    /// The controller replica runs: [`Identity::is_pristine`] follows its log from now on.
    pub fn watch_controller(&self, controller: Replica) {
        if controller.last_raft_index() == 0 {
            *self.empty_controller.lock() = Some(controller);
        }
    }

    /// The check passed: a new data dir's identity is written (durably), so that from now on this data dir
    /// counts as one that has taken part.
    pub fn settle(&self) -> Result<(), IdentityError> {
        if self.is_fresh() {
            self.write()?;
            self.fresh.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Records the cluster id the controller's metadata holds: written the first time; a different one than
    /// the data dir's is refused.
    pub fn learn_cluster_id(&self, id: &str) -> Result<(), IdentityError> {
        match self.cluster_id() {
            Some(known) if known == id => Ok(()),
            Some(known) => Err(IdentityError::OtherCluster {
                found: known.to_owned(),
                known: id.to_owned(),
            }),
            None => {
                let _ = self.cluster_id.set(id.to_owned());
                if !self.is_fresh() {
                    self.write()?;
                }
                tracing::info!(cluster_id = id, "this broker's cluster id");
                Ok(())
            }
        }
    }

    fn write(&self) -> Result<(), IdentityError> {
        let file = IdentityFile {
            node_id: self.node_id,
            incarnation: format!("{:016x}", self.incarnation),
            cluster_id: self.cluster_id().map(str::to_owned),
        };
        let text = format!(
            "# Ferry broker identity (docs/operations.md, \"Identity\"): never copy it to another broker\n{}",
            toml::to_string(&file).expect("the identity serializes")
        );
        crate::storage::checkpoint::write_atomically(
            self.disk.as_ref(),
            &self.dir,
            FILE_NAME,
            text.as_bytes(),
        )?;
        Ok(())
    }
}

fn read_file(disk: &dyn Disk, path: &Path) -> Result<IdentityFile, IdentityError> {
    let unreadable = |why: String| IdentityError::Unreadable {
        path: path.to_owned(),
        why,
    };
    let f = disk
        .open(path, false)
        .map_err(|e| StorageError::io(path, e))?;
    let len = f.len().map_err(|e| StorageError::io(path, e))?;
    if len > FILE_BYTES_MAX {
        return Err(unreadable(format!(
            "{len} bytes, more than an identity file's {FILE_BYTES_MAX}"
        )));
    }
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, 0)
        .map_err(|e| StorageError::io(path, e))?;
    let text = String::from_utf8(b).map_err(|_| unreadable("not UTF-8".into()))?;
    toml::from_str(&text).map_err(|e| unreadable(e.message().to_owned()))
}

/// A peer's answer to Hello, as plain values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloAnswer {
    pub node_id: u64,
    /// Empty when the peer has none yet.
    pub cluster_id: String,
    /// The peer's own data dir is new and waiting: it holds no state.
    pub fresh: bool,
    /// Read on the controller leader after a committed barrier.
    pub confirmed: bool,
    pub registered: bool,
    pub registered_incarnation: u64,
    /// Not confirmed: the controller leader's peer address, when the peer knows it.
    pub leader_address: String,
}

/// What a broker whose data dir is new does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// Not decided yet: why (which peers have not answered what is needed).
    Wait(String),
    Refuse(String),
}

/// Judges the answers a broker with a new data dir gathered. It may take part only when the controller
/// leader confirmed that the cluster never registered its node id, or when every other initial voter is
/// new as well (the cluster's first start). A confirmed registration means this node id voted and
/// acknowledged before, with a data dir since lost: it refuses, naming the procedure. Anything else waits:
/// a peer that holds state but knows no controller leader cannot tell.
pub fn judge_fresh(
    node_id: u64,
    initial_voters: &[u64],
    answers: &BTreeMap<u64, HelloAnswer>,
) -> Verdict {
    if let Some(a) = answers.values().find(|a| a.confirmed) {
        if !a.registered {
            return Verdict::Proceed;
        }
        let inc = match a.registered_incarnation {
            0 => "an earlier data dir".to_owned(),
            n => format!("incarnation {n:016x}"),
        };
        return Verdict::Refuse(format!(
            "this broker's data dir is empty, but cluster {} already knows broker {node_id} ({inc}): its data \
             dir was lost, and a broker that has forgotten its Raft votes must not vote again. Rebuild it as a \
             new replica: `ferry cluster remove-broker {node_id}` on a running broker, wait until `ferry \
             cluster status` no longer lists it, then start this broker again: it rejoins empty with \
             `auto_join` (as the Kubernetes manifests set it), otherwise add it with `ferry cluster \
             add-broker {node_id} PEER_ADDRESS` (docs/operations.md, \"A broker lost its data dir\")",
            if a.cluster_id.is_empty() { "(id not minted yet)" } else { &a.cluster_id },
        ));
    }
    let others: Vec<u64> = initial_voters
        .iter()
        .copied()
        .filter(|v| *v != node_id)
        .collect();
    if others
        .iter()
        .all(|v| answers.get(v).is_some_and(|a| a.fresh))
    {
        return Verdict::Proceed;
    }
    let silent: Vec<String> = others
        .iter()
        .filter(|v| !answers.contains_key(v))
        .map(u64::to_string)
        .collect();
    let holding: Vec<String> = answers
        .values()
        .filter(|a| !a.fresh)
        .map(|a| a.node_id.to_string())
        .collect();
    Verdict::Wait(format!(
        "a new data dir takes part only once the controller leader confirms the cluster does not know broker \
         {node_id}, or every initial voter is new too; not answering: [{}]; holding state without a \
         controller leader to ask: [{}]",
        silent.join(", "),
        holding.join(", ")
    ))
}

/// Judges a broker with state against its peers' cluster ids: refused when a majority of the initial
/// voters (`voters_total`, itself included) answered a cluster id other than its own.
pub fn judge_known(
    own: Option<&str>,
    voters_total: usize,
    answers: &BTreeMap<u64, HelloAnswer>,
) -> Result<(), IdentityError> {
    let Some(own) = own else { return Ok(()) };
    let others: Vec<&HelloAnswer> = answers
        .values()
        .filter(|a| !a.cluster_id.is_empty() && a.cluster_id != own)
        .collect();
    if others.len() > voters_total / 2 {
        return Err(IdentityError::OtherCluster {
            found: own.to_owned(),
            known: others[0].cluster_id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
