//! `ferry-storage-bench`: appends batches to a real partition log with an fsync per batch (what the broker
//! does per group commit) and reports MB/s and records/s beside the disk's sequential write rate measured in
//! the same run with `dd oflag=direct` (the raw ceiling). Results go to docs/benchmarks.md.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use ferry_protocol::batch::{self, BatchBuilder};
use ferry_storage::{Append, LogConfig, OsDisk, PartitionLog};

#[derive(Debug, Parser)]
#[command(
    about = "Storage benchmark: log append with fsync per batch vs. the disk's sequential write rate"
)]
struct Args {
    /// Directory to write in (a temporary one under it is used and removed).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Batch size (bytes, approximately).
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Record value size (bytes).
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Bytes to append per round.
    #[arg(long, default_value_t = 512 << 20)]
    total_bytes: u64,
    /// Rounds of (log run, dd run), alternated; medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Emit one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn build_batch(batch_bytes: usize, record_bytes: usize) -> bytes::Bytes {
    let per = BatchBuilder::record_size(None, &vec![0; record_bytes], &[]);
    let n = (batch_bytes.saturating_sub(batch::HEADER_LEN) / per).max(1);
    let mut b = BatchBuilder::with_capacity(1, batch_bytes);
    let value = vec![0x5a; record_bytes];
    for _ in 0..n {
        b.push(1, None, &value, &[]);
    }
    b.finish()
}

/// Sequential write rate of the disk under `dir` (MB/s), with `dd` writing 1 MiB direct blocks + fdatasync.
fn dd_rate(dir: &Path, total_bytes: u64) -> anyhow::Result<f64> {
    let file = dir.join("dd.bin");
    let count = (total_bytes >> 20).max(64);
    let started = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args([
            "bs=1M",
            &format!("count={count}"),
            "oflag=direct",
            "conv=fdatasync",
        ])
        .output()
        .context("running dd")?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "dd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((count << 20) as f64 / secs / 1e6)
}

/// One timed log run: (MB/s, records/s, mean fsync ms).
fn log_rate(dir: &Path, data: &bytes::Bytes, total_bytes: u64) -> anyhow::Result<(f64, f64, f64)> {
    let h = batch::validate(data)?;
    let (mut log, _) = PartitionLog::open(
        Arc::new(OsDisk),
        std::sync::Arc::new(ferry_storage::SystemClock),
        dir,
        LogConfig::default(),
        1,
        0,
        1,
    )?;
    let batches = (total_bytes / data.len() as u64).max(1);
    let mut fsync_time = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..batches {
        let offset = log.next_offset();
        let idx = log.last_raft_index() + 1;
        let file = log.append(&[Append::new(data, &h, offset, 1, idx)?])?;
        let t = Instant::now();
        file.sync_data()?;
        fsync_time += t.elapsed();
        // As the broker does after each fsync: the durable watermark moves (one pwrite).
        log.mark_durable()?;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(log);
    std::fs::remove_dir_all(dir)?;
    let bytes = batches * data.len() as u64;
    let records = batches * u64::from(h.record_count);
    Ok((
        bytes as f64 / secs / 1e6,
        records as f64 / secs,
        fsync_time.as_secs_f64() * 1e3 / batches as f64,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let tmp = tempfile::tempdir_in(&args.dir).context("temp dir")?;
    let data = build_batch(args.batch_bytes, args.record_bytes);
    let (mut logs, mut recs, mut fsyncs, mut dds, mut ratios) =
        (vec![], vec![], vec![], vec![], vec![]);
    // Alternate the two measurements so both see the same machine (this one is shared and noisy).
    for round in 0..args.rounds {
        let (mb, rs, fs) = log_rate(
            &tmp.path().join(format!("p{round}")),
            &data,
            args.total_bytes,
        )?;
        let dd = dd_rate(tmp.path(), args.total_bytes)?;
        logs.push(mb);
        recs.push(rs);
        fsyncs.push(fs);
        dds.push(dd);
        ratios.push(mb / dd);
    }
    let (log_mb_s, records_s, fsync_ms, dd_mb_s, ratio) = (
        median(logs),
        median(recs),
        median(fsyncs),
        median(dds),
        median(ratios),
    );
    if args.json {
        println!(
            "{{\"batch_bytes\":{},\"rounds\":{},\"log_mb_s\":{log_mb_s:.1},\"records_s\":{records_s:.0},\"fsync_ms_avg\":{fsync_ms:.3},\"dd_mb_s\":{dd_mb_s:.1},\"ratio\":{ratio:.3}}}",
            data.len(),
            args.rounds
        );
    } else {
        println!(
            "batch {} bytes, {} MiB per round, {} rounds (medians)",
            data.len(),
            args.total_bytes >> 20,
            args.rounds
        );
        println!("log append + fsync per batch: {log_mb_s:.1} MB/s, {records_s:.0} records/s, fsync avg {fsync_ms:.3} ms");
        println!("dd sequential write (1 MiB direct + fdatasync): {dd_mb_s:.1} MB/s");
        println!("ratio log/dd: {:.0}%", ratio * 100.0);
    }
    Ok(())
}
