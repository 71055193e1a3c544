//! What the group coordinator keeps in memory: the groups of each `__consumer_offsets` partition led here.

use std::collections::HashMap;

use crate::groups::state::Group;

/// The groups of one `__consumer_offsets` partition led here, as of the Raft term they were loaded in.
#[derive(Debug, Default)]
pub struct Loaded {
    pub(super) term: u64,
    pub(super) groups: HashMap<String, Group>,
}

/// Coordinator state: loaded partitions by partition number.
pub type Coordinated = tokio::sync::Mutex<HashMap<u32, Loaded>>;
