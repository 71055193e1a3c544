//! Replica agreement after the final heal: every broker's copy of every partition, read straight from its
//! segment files, must hold exactly the leader's records over the committed range (the drained log). The
//! final read uses only the leaders; a follower that diverged, or was left damaged, would otherwise pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_protocol::batch::{self, Records, HEADER_LEN};

/// Offset → value of every data record in the partition's segment files under `data_dir`; `Err` names a
/// missing partition or a batch that does not validate (damage left unrepaired).
pub fn replica_log(
    data_dir: &Path,
    topic: &str,
    partition: u32,
) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for seg in segments(data_dir, topic, partition)? {
        let b = Bytes::from(std::fs::read(&seg).map_err(|e| format!("{}: {e}", seg.display()))?);
        let mut pos = 0;
        while pos + HEADER_LEN <= b.len() {
            let len =
                u32::from_le_bytes(b[pos + 24..pos + 28].try_into().expect("4 bytes")) as usize;
            if len < HEADER_LEN || pos + len > b.len() {
                break; // the unsynced tail of the active segment of a running broker
            }
            let one = b.slice(pos..pos + len);
            let h = batch::validate_stored(&one)
                .map_err(|e| format!("{} at {pos}: {e}", seg.display()))?;
            if !h.is_control() {
                for r in Records::new(one, h) {
                    let r = r.map_err(|e| format!("{} at {pos}: {e}", seg.display()))?;
                    out.insert(r.offset, String::from_utf8_lossy(&r.value).into_owned());
                }
            }
            pos += len;
        }
    }
    Ok(out)
}

/// The `.log` files of the partition, oldest first.
fn segments(data_dir: &Path, topic: &str, partition: u32) -> Result<Vec<PathBuf>, String> {
    let topics = data_dir.join("topics");
    let topic_dir = std::fs::read_dir(&topics)
        .map_err(|e| format!("{}: {e}", topics.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split_once('-').is_some_and(|(_, t)| t == topic))
        })
        .ok_or_else(|| format!("no directory of topic {topic} in {}", topics.display()))?;
    let dir = topic_dir.join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    Ok(logs)
}

/// Where the replicas of `partition` on `data_dirs` differ from the leader's committed `log` (offset =
/// index): one line per replica that misses or holds another value at a committed offset, or cannot be
/// read.
pub fn disagreements(
    data_dirs: &[PathBuf],
    topic: &str,
    partition: u32,
    log: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, dir) in data_dirs.iter().enumerate() {
        match replica_log(dir, topic, partition) {
            Err(why) => out.push(format!("broker {} partition {partition}: {why}", i + 1)),
            Ok(replica) => {
                let differing: Vec<u64> = (0..log.len() as u64)
                    .filter(|o| replica.get(o) != Some(&log[*o as usize]))
                    .collect();
                if let Some(first) = differing.first() {
                    out.push(format!(
                        "broker {} partition {partition}: {} of {} committed offsets differ from the \
                         leader's, first {first} ({:?} against {:?})",
                        i + 1,
                        differing.len(),
                        log.len(),
                        replica.get(first),
                        log[*first as usize]
                    ));
                }
            }
        }
    }
    out
}
