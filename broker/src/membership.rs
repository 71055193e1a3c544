//! Membership planning, pure: given the metadata, which partitions move where, which brokers the controller
//! group should have as voters, and which removed brokers can be forgotten. The controller leader runs
//! these plans (`broker::tasks::membership`); partition leaders carry out each move as Raft configuration
//! changes (`replica::reconfigure`).

use crate::metadata::{same_set, Command, Metadata};

/// Partitions being moved at once, cluster-wide: each move copies a replica's data, so a cluster under load
/// is not flooded with catch-up traffic.
pub const MOVES_IN_FLIGHT_MAX: usize = 8;

/// Replica moves that bring the cluster closer to balance, at most `MOVES_IN_FLIGHT_MAX` partitions moving
/// in all (counting those already moving). First every replica on a leaving broker goes to the least
/// loaded active broker; then, while one active broker holds two replicas more than another, one moves
/// from the most to the least loaded. A replaced replica keeps its position, so the preferred leader moves
/// with it. Only brokers in `ready` (those that have joined the controller: up and caught up) receive
/// replicas.
pub fn plan_moves(meta: &Metadata, ready: &[u64]) -> Vec<Command> {
    let active: Vec<u64> = meta
        .active_members()
        .into_iter()
        .filter(|id| ready.contains(id))
        .collect();
    if active.is_empty() {
        return Vec::new();
    }
    let (mut load, moving) = replica_load(meta, &active);
    let budget = MOVES_IN_FLIGHT_MAX.saturating_sub(moving);
    let mut out = Vec::new();
    drain_leaving(meta, &mut load, budget, &mut out);
    spread(meta, &mut load, budget, &mut out);
    out
}

/// Replicas per active broker, and how many partitions are moving already.
fn replica_load(meta: &Metadata, active: &[u64]) -> (Load, usize) {
    let mut load: Load = active.iter().map(|id| (*id, 0)).collect();
    let mut moving = 0;
    for t in meta.topics.values() {
        for p in 0..t.partitions {
            if t.moving(p) {
                moving += 1;
            }
            for id in &t.replica_sets[p as usize] {
                if let Some(n) = load.get_mut(id) {
                    *n += 1;
                }
            }
        }
    }
    (load, moving)
}

/// Replicas per active broker.
type Load = std::collections::BTreeMap<u64, usize>;

/// Whether broker `id` is a member that is not leaving.
fn staying(meta: &Metadata, id: u64) -> bool {
    meta.members.get(&id).is_some_and(|m| !m.leaving)
}

/// Moves each replica on a leaving broker to the least loaded active broker not already in its set (ties:
/// lowest id), until `out` holds `budget` moves.
fn drain_leaving(meta: &Metadata, load: &mut Load, budget: usize, out: &mut Vec<Command>) {
    for t in meta.topics.values() {
        for p in 0..t.partitions {
            if out.len() >= budget {
                return;
            }
            if t.moving(p) {
                continue;
            }
            let set = &t.replica_sets[p as usize];
            let Some(pos) = set.iter().position(|id| !staying(meta, *id)) else {
                continue;
            };
            let least = load
                .iter()
                .filter(|(id, _)| !set.contains(id))
                .min_by_key(|(id, n)| (**n, **id))
                .map(|(id, _)| *id);
            let Some(to) = least else {
                continue; // not enough active brokers for this replication factor
            };
            let mut replicas = set.clone();
            replicas[pos] = to;
            *load.get_mut(&to).expect("active") += 1;
            out.push(Command::MoveReplicas {
                topic: t.name.clone(),
                partition: p,
                replicas,
            });
        }
    }
}

/// Moves one replica at a time from the most to the least loaded active broker while they differ by two
/// or more, until `out` holds `budget` moves.
fn spread(meta: &Metadata, load: &mut Load, budget: usize, out: &mut Vec<Command>) {
    let mut moved: Vec<(String, u32)> = Vec::new();
    while out.len() < budget {
        let (&max_id, &max_n) = load
            .iter()
            .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
            .expect("non-empty");
        let (&min_id, &min_n) = load
            .iter()
            .min_by_key(|(id, n)| (**n, **id))
            .expect("non-empty");
        if max_n < min_n + 2 {
            break;
        }
        let candidate = meta.topics.values().find_map(|t| {
            (0..t.partitions).find_map(|p| {
                let set = &t.replica_sets[p as usize];
                let free = !t.moving(p)
                    && !moved.contains(&(t.name.clone(), p))
                    && set.contains(&max_id)
                    && !set.contains(&min_id)
                    && set.iter().all(|id| staying(meta, *id));
                free.then(|| (t.name.clone(), p, set.clone()))
            })
        });
        let Some((topic, p, set)) = candidate else {
            break;
        };
        let replicas: Vec<u64> = set
            .iter()
            .map(|id| if *id == max_id { min_id } else { *id })
            .collect();
        *load.get_mut(&max_id).expect("active") -= 1;
        *load.get_mut(&min_id).expect("active") += 1;
        moved.push((topic.clone(), p));
        out.push(Command::MoveReplicas {
            topic,
            partition: p,
            replicas,
        });
    }
}

/// The controller group's voters once membership settles: every member except a leaving broker that no
/// longer holds a replica (it stays a voter while it does, so it keeps following the metadata that tells
/// it when to let go).
pub fn controller_voters(meta: &Metadata) -> Vec<u64> {
    meta.members
        .iter()
        .filter(|(id, m)| !m.leaving || meta.replicas_on(**id) > 0)
        .map(|(id, _)| *id)
        .collect()
}

/// Leaving brokers that hold no replica and are no longer controller voters: they can be forgotten.
pub fn forgettable(meta: &Metadata, controller_voters_now: &[u64]) -> Vec<u64> {
    meta.members
        .iter()
        .filter(|(id, m)| {
            m.leaving && meta.replicas_on(**id) == 0 && !controller_voters_now.contains(id)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Whether the partition's voters (as its leader sees them) match its assignment.
pub fn settled(voters: &[u64], learners: &[u64], assignment: &[u64]) -> bool {
    learners.is_empty() && same_set(voters, assignment)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metadata::{place, TopicSettings};

    fn cluster(brokers: &[u64], partitions: u32, rf: u32) -> Metadata {
        let peers: BTreeMap<u64, String> =
            brokers.iter().map(|id| (*id, format!("h:{id}"))).collect();
        let mut m = Metadata::new(&peers);
        m.apply(Command::CreateTopic {
            name: "t".into(),
            partitions,
            replica_sets: place(brokers, partitions, rf, 0),
            settings: TopicSettings::default(),
        });
        m
    }

    /// Applies moves and settles them, as the leaders would.
    fn settle_all(m: &mut Metadata, moves: Vec<Command>) {
        for c in moves {
            let Command::MoveReplicas {
                topic,
                partition,
                replicas,
            } = c.clone()
            else {
                panic!("only moves")
            };
            m.apply(c);
            m.apply(Command::SettleReplicas {
                topic,
                partition,
                voters: replicas,
            });
        }
    }

    fn loads(m: &Metadata) -> Vec<usize> {
        m.members.keys().map(|id| m.replicas_on(*id)).collect()
    }

    #[test]
    fn an_added_broker_gets_its_share() {
        let mut m = cluster(&[1, 2, 3], 6, 3);
        m.apply(Command::AddBroker {
            id: 4,
            peer_address: "h:4".into(),
        });
        for _ in 0..10 {
            let moves = plan_moves(&m, &[1, 2, 3, 4]);
            assert!(moves.len() <= MOVES_IN_FLIGHT_MAX);
            settle_all(&mut m, moves);
        }
        let l = loads(&m);
        assert_eq!(l.iter().sum::<usize>(), 18);
        assert!(
            l.iter().max().unwrap() - l.iter().min().unwrap() <= 1,
            "{l:?}"
        );
        for s in &m.topics["t"].replica_sets {
            let mut u = s.clone();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), 3, "three distinct replicas");
        }
        assert!(
            plan_moves(&m, &[1, 2, 3, 4]).is_empty(),
            "balanced: nothing more moves"
        );
    }

    #[test]
    fn a_leaving_broker_is_drained_then_forgotten() {
        let mut m = cluster(&[1, 2, 3, 4], 6, 3);
        m.apply(Command::RemoveBroker { id: 1 });
        assert_eq!(
            controller_voters(&m),
            vec![1, 2, 3, 4],
            "stays while it holds replicas"
        );
        let moves = plan_moves(&m, &[1, 2, 3, 4]);
        for c in &moves {
            m.apply(c.clone());
        }
        // Moves in flight: broker 1 still runs its replicas until they settle.
        assert!(m.replicas_on(1) > 0);
        assert!(
            plan_moves(&m, &[1, 2, 3, 4]).is_empty(),
            "nothing more while those move"
        );
        for c in moves {
            let Command::MoveReplicas {
                topic,
                partition,
                replicas,
            } = c
            else {
                unreachable!()
            };
            m.apply(Command::SettleReplicas {
                topic,
                partition,
                voters: replicas,
            });
        }
        assert_eq!(m.replicas_on(1), 0);
        assert_eq!(controller_voters(&m), vec![2, 3, 4]);
        assert!(
            forgettable(&m, &[1, 2, 3, 4]).is_empty(),
            "still a controller voter"
        );
        assert_eq!(forgettable(&m, &[2, 3, 4]), vec![1]);
        m.apply(Command::ForgetBroker { id: 1 });
        assert!(!m.members.contains_key(&1));
        assert_eq!(loads(&m), vec![6, 6, 6]);
    }

    #[test]
    fn a_stale_settle_report_changes_nothing() {
        let mut m = cluster(&[1, 2, 3, 4], 1, 3);
        m.apply(Command::MoveReplicas {
            topic: "t".into(),
            partition: 0,
            replicas: vec![4, 2, 3],
        });
        m.apply(Command::SettleReplicas {
            topic: "t".into(),
            partition: 0,
            voters: vec![1, 2, 3],
        });
        assert!(m.topics["t"].moving(0));
        assert!(m.topics["t"].hosts(0, 1) && m.topics["t"].hosts(0, 4));
    }

    #[test]
    fn too_few_brokers_means_no_move() {
        let mut m = cluster(&[1, 2, 3], 3, 3);
        m.apply(Command::RemoveBroker { id: 3 });
        assert!(plan_moves(&m, &[1, 2, 3]).is_empty());
    }

    #[test]
    fn an_added_broker_gets_nothing_until_ready() {
        let mut m = cluster(&[1, 2, 3], 6, 3);
        m.apply(Command::AddBroker {
            id: 4,
            peer_address: "h:4".into(),
        });
        assert!(plan_moves(&m, &[1, 2, 3]).is_empty());
        assert!(!plan_moves(&m, &[1, 2, 3, 4]).is_empty());
    }
}
