//! The checker: the whole history against the drained log (a port of the Jepsen queue checks). Pure: it
//! reads what the run observed and returns the verdict.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use crate::faults::Fault;
use crate::load::History;
use crate::order;
use crate::setup::PARTITIONS;

/// What the checker concluded.
pub struct Verdict {
    /// The one summary line (`lost=0 duplicated=0 ...`).
    pub line: String,
    /// The JSON report.
    pub report: serde_json::Value,
    /// Violations of every kind together (0: the run is clean).
    pub violations: usize,
}

/// What the run saw of the brokers and the schedule, besides the history.
pub struct Run<'a> {
    /// The faults scheduled (each must have run, or be in `allowed_skips`).
    pub scheduled: &'a [Fault],
    /// Faults this run was told it may skip (`--allow-skip`).
    pub allowed_skips: &'a [Fault],
    /// Membership changes that did not settle.
    pub stuck_changes: usize,
    /// SIGTERMs that did not stop a broker in time.
    pub hung_stops: usize,
    /// Brokers found exited that the schedule had not stopped, each with how.
    pub died: &'a [String],
    /// Panic lines brokers wrote to stderr.
    pub panics: usize,
    /// Replicas whose log differs from the leader's over the committed range after the final heal.
    pub disagreements: &'a [String],
    /// Longest unavailability a fault may cause (ms); longer is a violation.
    pub unavailable_max_ms: u128,
}

/// Checks history `h` against `log` (every partition drained from offset 0 after healing). `events` are the
/// faults with when each took effect; the run lasted from `started` to `end`.
pub fn check(
    h: &History,
    log: &BTreeMap<u32, Vec<String>>,
    events: &[(Fault, Instant, String)],
    run: &Run<'_>,
    started: Instant,
    end: Instant,
) -> Verdict {
    let stuck_changes = run.stuck_changes;
    let mut at: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    for (p, values) in log {
        for (o, v) in values.iter().enumerate() {
            at.entry(v.as_str()).or_default().push((*p, o as u64));
        }
    }
    let lost: Vec<&String> = h
        .acked
        .keys()
        .filter(|v| !at.contains_key(v.as_str()))
        .collect();
    let duplicated = at.values().filter(|places| places.len() > 1).count();
    // Values in the log that no producer sent (every send ended acknowledged or failed before the drain):
    // made up, or damaged into another value.
    let phantom: Vec<&str> = at
        .keys()
        .filter(|v| !h.acked.contains_key(**v) && !h.failed.contains(**v))
        .copied()
        .collect();
    let mut inconsistent = 0;
    for (v, (p, o, _, _)) in &h.acked {
        if log[p].get(*o as usize) != Some(v) {
            inconsistent += 1;
        }
    }
    for (_, p, o, v) in h.polled() {
        if log
            .get(&p)
            .and_then(|l| l.get(o as usize))
            .map(String::as_str)
            != Some(v)
        {
            inconsistent += 1;
        }
    }
    let seen: HashSet<&str> = h.polled().map(|(_, _, _, v)| v).collect();
    let unseen = h
        .acked
        .keys()
        .filter(|v| !seen.contains(v.as_str()))
        .count();
    let mut last_commit: HashMap<u32, i64> = HashMap::new();
    let (mut regressions, mut beyond, mut stale_views) = (0, 0, 0);
    for (p, committed, end_offset) in &h.commits {
        if let Some(prev) = last_commit.get(p) {
            if committed < prev {
                regressions += 1;
            }
        }
        // Past the end of what the partition ever held: the drained log is the whole partition.
        if *committed > log.get(p).map_or(0, |l| l.len() as i64) {
            beyond += 1;
        }
        // A describe's end offset is the high watermark as the replica it asked knew it, a lower bound: a
        // leader elected a moment ago learns the commit index only when it commits in its own term. A
        // commit past it is counted, not a violation (commits are checked against such a lower bound).
        if *end_offset >= 0 && committed > end_offset {
            stale_views += 1;
        }
        last_commit.insert(*p, *committed);
    }
    // Unavailability: per fault, until every partition acknowledged a publish sent after the fault began.
    let mut per_fault: BTreeMap<&str, u128> = BTreeMap::new();
    let mut report_faults = Vec::new();
    for (fault, start, what) in events {
        let mut worst = 0u128;
        for p in 0..PARTITIONS {
            let first = h
                .acked
                .values()
                .filter(|(q, _, sent, _)| *q == p && sent >= start)
                .map(|(_, _, _, acked)| *acked)
                .min()
                .unwrap_or(end);
            worst = worst.max((first - *start).as_millis());
        }
        let e = per_fault.entry(fault.name()).or_default();
        *e = (*e).max(worst);
        report_faults.push(
            serde_json::json!({"fault": fault.name(), "what": what, "unavailable_ms": worst}),
        );
    }
    let max_unavailable = per_fault.values().copied().max().unwrap_or(0);
    let over_bound: Vec<String> = per_fault
        .iter()
        .filter(|(_, ms)| **ms > run.unavailable_max_ms)
        .map(|(f, ms)| format!("{f} {ms} ms"))
        .collect();
    // Faults that could not run (each says why in its `what`): printed and counted; a violation unless the
    // run was told it may skip them. A fault of the schedule that never ran at all (a schedule that
    // shrank) is one too.
    let skipped: Vec<String> = events
        .iter()
        .filter(|(_, _, what)| what.starts_with("skipped"))
        .map(|(fault, _, what)| format!("{} ({what})", fault.name()))
        .collect();
    let ran = |f: &Fault| {
        events
            .iter()
            .any(|(g, _, what)| g == f && !what.starts_with("skipped"))
    };
    let mut not_run: Vec<&str> = run
        .scheduled
        .iter()
        .filter(|f| !ran(f) && !run.allowed_skips.contains(f))
        .map(|f| f.name())
        .collect();
    // Consumers crash on their own schedule (`--consumer-churn-secs`): at least one crash, or the
    // ownership oracles never saw a handover without a goodbye.
    if h.consumer_crashes == 0 {
        not_run.push("consumer-crash");
    }
    let order = order::check_consumers(&h.deliveries);
    let send_order = order::send_order(log);
    for (what, found) in [
        ("overlapping owners", &order.overlapping_owners),
        ("record outside ownership", &order.outside_ownership),
        ("poll order", &order.nonmonotonic),
        ("poll skip", &order.skips),
        ("send order", &send_order),
    ] {
        for f in found.iter().take(5) {
            eprintln!("chaos: {what}: {f}");
        }
    }
    let failed_visible = h
        .failed
        .iter()
        .filter(|v| at.contains_key(v.as_str()))
        .count();
    let violations = lost.len()
        + phantom.len()
        + duplicated
        + inconsistent
        + unseen
        + regressions
        + beyond
        + stuck_changes
        + not_run.len()
        + run.hung_stops
        + run.died.len()
        + run.panics
        + run.disagreements.len()
        + over_bound.len()
        + order.overlapping_owners.len()
        + order.outside_ownership.len()
        + order.nonmonotonic.len()
        + order.skips.len()
        + send_order.len();
    let line = format!(
        "lost={} phantom={} duplicated={duplicated} inconsistent={inconsistent} unseen={unseen} commit_regressions={regressions} commit_beyond_end={beyond} stuck_membership={stuck_changes} not_run={} hung_stops={} died={} panics={} replica_disagreements={} unavailable_over_bound={} overlapping_owners={} outside_ownership={} poll_order={} poll_skips={} send_order={} stale_end_views={stale_views} acked={} failed={} failed_visible={failed_visible} polled={} faults={} skipped={} consumer_crashes={} consumer_closes={} max_unavailable_ms={max_unavailable}",
        lost.len(),
        phantom.len(),
        not_run.len(),
        run.hung_stops,
        run.died.len(),
        run.panics,
        run.disagreements.len(),
        over_bound.len(),
        order.overlapping_owners.len(),
        order.outside_ownership.len(),
        order.nonmonotonic.len(),
        order.skips.len(),
        send_order.len(),
        h.acked.len(),
        h.failed.len(),
        h.polled().count(),
        events.len(),
        skipped.len(),
        h.consumer_crashes,
        h.consumer_closes,
    );
    let report = serde_json::json!({
        "lost": lost.len(), "lost_examples": lost.iter().take(10).collect::<Vec<_>>(),
        "phantom": phantom.len(), "phantom_examples": phantom.iter().take(10).collect::<Vec<_>>(),
        "duplicated": duplicated, "inconsistent": inconsistent, "unseen": unseen,
        "commit_regressions": regressions, "commit_beyond_end": beyond, "stuck_membership": stuck_changes, "stale_end_views": stale_views,
        "acked": h.acked.len(), "failed": h.failed.len(), "failed_visible": failed_visible,
        "polled": h.polled().count(), "max_unavailable_ms": max_unavailable,
        "overlapping_owners": order.overlapping_owners, "outside_ownership": order.outside_ownership,
        "poll_order": order.nonmonotonic, "poll_skips": order.skips, "send_order": send_order,
        "consumer_crashes": h.consumer_crashes, "consumer_closes": h.consumer_closes,
        "max_unavailable_ms_per_fault": per_fault, "faults": report_faults, "skipped": skipped,
        "not_run": not_run, "hung_stops": run.hung_stops, "died": run.died, "panics": run.panics,
        "replica_disagreements": run.disagreements, "unavailable_over_bound": over_bound,
        "unavailable_max_ms": run.unavailable_max_ms,
        "duration_ms": (end - started).as_millis(),
    });
    Verdict {
        line,
        report,
        violations,
    }
}
