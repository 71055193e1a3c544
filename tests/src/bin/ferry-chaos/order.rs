//! The order oracles, pure: ownership of a partition by one group member at a time, every member's records
//! in offset order without gaps, handovers that skip nothing, and each producer's values stored in the
//! order it sent them.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::load::{Delivery, Seen};

/// One member's ownership of one partition: from its `Assigned` to its `Revoked` (or the member's end).
struct Period {
    member: usize,
    partition: u32,
    /// (offset, when handed out), in delivery order.
    records: Vec<(u64, Instant)>,
}

/// What the order oracles found: counts and a few examples each.
#[derive(Default, Debug)]
pub struct Order {
    /// Two members handing out records of one partition over overlapping times.
    pub overlapping_owners: Vec<String>,
    /// A record handed out while its member did not own its partition.
    pub outside_ownership: Vec<String>,
    /// Within one ownership: an offset not after the previous one.
    pub nonmonotonic: Vec<String>,
    /// Within one ownership, an offset jumping past the next; or an ownership starting past everything
    /// handed out before it (the previous owner's records not all committed yet skipped).
    pub skips: Vec<String>,
}

/// Splits the deliveries into ownership periods.
fn periods(deliveries: &[Delivery], order: &mut Order) -> Vec<Period> {
    let mut done = Vec::new();
    let mut open: HashMap<(usize, u32), Period> = HashMap::new();
    for d in deliveries {
        let key = (d.member, d.partition);
        match &d.what {
            Seen::Assigned => {
                let fresh = Period {
                    member: d.member,
                    partition: d.partition,
                    records: Vec::new(),
                };
                if let Some(p) = open.insert(key, fresh) {
                    done.push(p);
                }
            }
            Seen::Revoked => done.extend(open.remove(&key)),
            Seen::Record { offset, .. } => match open.get_mut(&key) {
                Some(p) => p.records.push((*offset, d.at)),
                None => order.outside_ownership.push(format!(
                    "member {} got {}@{offset} without owning it",
                    d.member, d.partition
                )),
            },
        }
    }
    done.extend(open.into_values());
    done.retain(|p| !p.records.is_empty());
    done
}

/// Checks the deliveries of every group member.
pub fn check_consumers(deliveries: &[Delivery]) -> Order {
    let mut order = Order::default();
    let periods = periods(deliveries, &mut order);
    for p in &periods {
        for w in p.records.windows(2) {
            let (a, b) = (w[0].0, w[1].0);
            if b <= a {
                order.nonmonotonic.push(format!(
                    "member {} on {}: {b} after {a}",
                    p.member, p.partition
                ));
            } else if b > a + 1 {
                order.skips.push(format!(
                    "member {} on {}: {a} then {b}",
                    p.member, p.partition
                ));
            }
        }
    }
    let mut by_partition: BTreeMap<u32, Vec<&Period>> = BTreeMap::new();
    for p in &periods {
        by_partition.entry(p.partition).or_default().push(p);
    }
    for (partition, mut ps) in by_partition {
        ps.sort_by_key(|p| p.records[0].1);
        // The latest hand-out so far, by whom; the highest offset handed out so far.
        let mut latest: Option<(Instant, usize)> = None;
        let mut highest: Option<u64> = None;
        for p in ps {
            let (first, first_at) = p.records[0];
            let last_at = p.records.last().map(|r| r.1).unwrap_or(first_at);
            if let Some((until, by)) = latest {
                if first_at < until && by != p.member {
                    order.overlapping_owners.push(format!(
                        "{partition}: member {} handed out {first} at {:?} before member {by} stopped ({:?} later)",
                        p.member,
                        first_at,
                        until - first_at
                    ));
                }
            }
            let bound = highest.map_or(0, |h| h + 1);
            if first > bound {
                order.skips.push(format!(
                    "{partition}: member {} started at {first}, past everything handed out before ({bound})",
                    p.member
                ));
            }
            if latest.is_none_or(|(until, _)| last_at > until) {
                latest = Some((last_at, p.member));
            }
            let top = p.records.iter().map(|r| r.0).max().unwrap_or(first);
            highest = Some(highest.map_or(top, |h| h.max(top)));
        }
    }
    order
}

/// Values stored out of their producer's send order: per partition, each producer's sequence numbers
/// (`p{producer}-{n}`) must rise along the log.
pub fn send_order(log: &BTreeMap<u32, Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (partition, values) in log {
        let mut last: HashMap<&str, (u64, usize)> = HashMap::new();
        for (offset, v) in values.iter().enumerate() {
            let Some((producer, n)) = v.split_once('-') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            if let Some((prev, at)) = last.get(producer) {
                if n <= *prev {
                    out.push(format!(
                        "{partition}: {producer}-{n} at {offset} after {producer}-{prev} at {at}"
                    ));
                }
            }
            last.insert(producer, (n, offset));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn d(member: usize, t: Instant, partition: u32, what: Seen) -> Delivery {
        Delivery {
            member,
            at: t,
            partition,
            what,
        }
    }

    fn rec(offset: u64) -> Seen {
        Seen::Record {
            offset,
            value: String::new(),
        }
    }

    /// Member 0 owns partition 0 for offsets 0..3, hands it over, member 1 reads 3..5 (after a crash of 0:
    /// from 0's commit at 2, so 2 comes twice, which at-least-once allows).
    fn handover(t0: Instant, second_starts: u64, second_from: u64) -> Vec<Delivery> {
        vec![
            d(0, at(t0, 0), 0, Seen::Assigned),
            d(0, at(t0, 1), 0, rec(0)),
            d(0, at(t0, 2), 0, rec(1)),
            d(0, at(t0, 3), 0, rec(2)),
            d(0, at(t0, 4), 0, Seen::Revoked),
            d(1, at(t0, second_starts), 0, Seen::Assigned),
            d(1, at(t0, second_starts + 1), 0, rec(second_from)),
            d(1, at(t0, second_starts + 2), 0, rec(second_from + 1)),
        ]
    }

    #[test]
    fn a_clean_handover_and_a_redelivery_are_fine() {
        let t0 = Instant::now();
        for from in [3, 2, 0] {
            let o = check_consumers(&handover(t0, 10, from));
            assert!(
                o.overlapping_owners.is_empty()
                    && o.skips.is_empty()
                    && o.nonmonotonic.is_empty()
                    && o.outside_ownership.is_empty(),
                "{from}: {o:?}"
            );
        }
    }

    #[test]
    fn two_owners_at_once_are_caught() {
        let t0 = Instant::now();
        // Member 1 hands out its first record (at 2 ms) before member 0's last (at 3 ms).
        let o = check_consumers(&handover(t0, 1, 3));
        assert_eq!(o.overlapping_owners.len(), 1, "{o:?}");
    }

    #[test]
    fn skips_are_caught_within_and_across_ownerships() {
        let t0 = Instant::now();
        let o = check_consumers(&handover(t0, 10, 4));
        assert_eq!(o.skips.len(), 1, "the new owner started past 3: {o:?}");
        let mut h = handover(t0, 10, 3);
        h[2] = d(0, at(t0, 2), 0, rec(5));
        h[3] = d(0, at(t0, 3), 0, rec(6));
        let o = check_consumers(&h);
        assert_eq!(o.skips.len(), 1, "0 then 5 within one ownership: {o:?}");
        assert_eq!(o.nonmonotonic.len(), 0);
    }

    #[test]
    fn going_back_within_an_ownership_and_records_without_one_are_caught() {
        let t0 = Instant::now();
        let mut h = handover(t0, 10, 3);
        h[3] = d(0, at(t0, 3), 0, rec(0));
        assert_eq!(check_consumers(&h).nonmonotonic.len(), 1);
        let mut h = handover(t0, 10, 3);
        h.remove(5); // member 1 never assigned
        assert_eq!(check_consumers(&h).outside_ownership.len(), 2);
    }

    #[test]
    fn a_producer_out_of_order_is_caught() {
        let log: BTreeMap<u32, Vec<String>> = [
            (
                0,
                vec!["p0-1".into(), "p1-1".into(), "p0-3".into(), "p1-2".into()],
            ),
            (1, vec!["p0-2".into()]),
        ]
        .into();
        assert!(send_order(&log).is_empty());
        let log: BTreeMap<u32, Vec<String>> =
            [(0, vec!["p0-3".into(), "p1-1".into(), "p0-1".into()])].into();
        assert_eq!(send_order(&log).len(), 1);
    }
}
