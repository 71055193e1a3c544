//! Consumer groups: assignment strategies and the per-group state machine, pure. The coordinator that runs
//! them on the leader of each group's `__consumer_offsets` partition is `broker::groups`.

pub mod assign;
pub mod limits;
pub mod state;
