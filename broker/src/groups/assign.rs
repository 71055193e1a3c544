//! Partition assignment for consumer groups, pure. Both strategies give each partition to one member
//! subscribed to its topic and spread partitions evenly (counts differ by at most one among members with the
//! same subscriptions).

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type Tp = (String, u32);

/// How a group's partitions are spread over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Assignor {
    /// Keep each partition where it is when that keeps the spread even; move as few as possible.
    #[default]
    Sticky,
    /// Per topic, contiguous ranges of partitions to members in member id order (Kafka's range).
    Range,
}

impl Assignor {
    /// The assignor named `name` ("" means the default).
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "" | "sticky" => Ok(Assignor::Sticky),
            "range" => Ok(Assignor::Range),
            other => Err(format!(
                "unknown assignor '{other}'; use 'sticky' or 'range'"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Sticky => "sticky",
            Assignor::Range => "range",
        }
    }
}

/// One member as the assignor sees it: its subscriptions and what it has now.
#[derive(Debug, Clone, Default)]
pub struct Subscriber {
    pub topics: BTreeSet<String>,
    pub current: BTreeSet<Tp>,
}

/// Assigns every partition of `partitions` (topic → count) to the members subscribed to its topic.
pub fn assign(
    assignor: Assignor,
    partitions: &BTreeMap<String, u32>,
    members: &BTreeMap<String, Subscriber>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    match assignor {
        Assignor::Range => range(partitions, members),
        Assignor::Sticky => sticky(partitions, members),
    }
}

/// Every member with no partition yet.
fn nothing_assigned(members: &BTreeMap<String, Subscriber>) -> BTreeMap<String, BTreeSet<Tp>> {
    members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect()
}

fn range(
    partitions: &BTreeMap<String, u32>,
    members: &BTreeMap<String, Subscriber>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut out = nothing_assigned(members);
    for (topic, &count) in partitions {
        let subs: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let n = subs.len() as u32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in subs.iter().enumerate() {
            let take = per + u32::from((i as u32) < extra);
            for p in next..next + take {
                out.get_mut(*m).expect("member").insert((topic.clone(), p));
            }
            next += take;
        }
    }
    out
}

fn sticky(
    partitions: &BTreeMap<String, u32>,
    members: &BTreeMap<String, Subscriber>,
) -> BTreeMap<String, BTreeSet<Tp>> {
    let mut out = nothing_assigned(members);
    if members.is_empty() {
        return out;
    }
    let all: Vec<Tp> = partitions
        .iter()
        .flat_map(|(t, &n)| (0..n).map(move |p| (t.clone(), p)))
        .filter(|(t, _)| members.values().any(|s| s.topics.contains(t)))
        .collect();
    // Each member's fair share of the partitions it could take (ceil): keeping more than that is not sticky
    // but unfair.
    let eligible = |tp: &Tp| -> Vec<&String> {
        members
            .iter()
            .filter(|(_, s)| s.topics.contains(&tp.0))
            .map(|(m, _)| m)
            .collect()
    };
    let quota = all.len().div_ceil(members.len()).max(1);
    let mut free: Vec<Tp> = Vec::new();
    for tp in &all {
        let keeper = members
            .iter()
            .find(|(_, s)| s.current.contains(tp) && s.topics.contains(&tp.0))
            .map(|(m, _)| m.clone());
        match keeper {
            Some(m) if out[&m].len() < quota => {
                out.get_mut(&m).expect("member").insert(tp.clone());
            }
            _ => free.push(tp.clone()),
        }
    }
    // The rest go to the least loaded eligible member.
    for tp in free {
        let to = eligible(&tp)
            .into_iter()
            .min_by_key(|m| (out[*m].len(), (*m).clone()))
            .cloned();
        if let Some(m) = to {
            out.get_mut(&m).expect("member").insert(tp);
        }
    }
    // Even out: move from the most to the least loaded while they differ by two or more.
    loop {
        let (max_m, max_n) = out
            .iter()
            .max_by_key(|(m, s)| (s.len(), std::cmp::Reverse((*m).clone())))
            .map(|(m, s)| (m.clone(), s.len()))
            .expect("members");
        let (min_m, min_n) = out
            .iter()
            .min_by_key(|(m, s)| (s.len(), (*m).clone()))
            .map(|(m, s)| (m.clone(), s.len()))
            .expect("members");
        if max_n < min_n + 2 {
            break;
        }
        let movable = out[&max_m]
            .iter()
            .find(|tp| members[&min_m].topics.contains(&tp.0))
            .cloned();
        let Some(tp) = movable else { break };
        out.get_mut(&max_m).expect("member").remove(&tp);
        out.get_mut(&min_m).expect("member").insert(tp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(names: &[&str], topic: &str) -> BTreeMap<String, Subscriber> {
        names
            .iter()
            .map(|n| {
                let s = Subscriber {
                    topics: [topic.to_owned()].into(),
                    current: BTreeSet::new(),
                };
                (n.to_string(), s)
            })
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges() {
        let parts: BTreeMap<String, u32> = [("t".into(), 5)].into();
        let a = assign(Assignor::Range, &parts, &subs(&["a", "b"], "t"));
        let ps = |m: &str| a[m].iter().map(|(_, p)| *p).collect::<Vec<_>>();
        assert_eq!(ps("a"), vec![0, 1, 2]);
        assert_eq!(ps("b"), vec![3, 4]);
    }

    #[test]
    fn sticky_moves_only_what_it_must() {
        let parts: BTreeMap<String, u32> = [("t".into(), 6)].into();
        let mut m = subs(&["a", "b"], "t");
        let first = assign(Assignor::Sticky, &parts, &m);
        assert_eq!((first["a"].len(), first["b"].len()), (3, 3));
        // A third member joins: each of the two gives up exactly one.
        for (k, v) in &first {
            m.get_mut(k).unwrap().current = v.clone();
        }
        m.insert(
            "c".into(),
            Subscriber {
                topics: ["t".to_owned()].into(),
                current: BTreeSet::new(),
            },
        );
        let second = assign(Assignor::Sticky, &parts, &m);
        assert_eq!(second["c"].len(), 2);
        for k in ["a", "b"] {
            assert_eq!(second[k].len(), 2);
            assert!(second[k].is_subset(&first[k]), "{k} kept what it had");
        }
        // Every partition exactly once.
        let all: Vec<Tp> = second.values().flatten().cloned().collect();
        let uniq: BTreeSet<Tp> = all.iter().cloned().collect();
        assert_eq!((all.len(), uniq.len()), (6, 6));
    }
}
