//! Log append (page cache, no fsync: the fsync cost is the storage benchmark's subject) and read.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ferry_protocol::batch::{self, BatchBuilder};
use ferry_storage::{Append, LogConfig, OsDisk, PartitionLog};

fn batch_of(records: usize, size: usize) -> bytes::Bytes {
    let mut b = BatchBuilder::new(1);
    for _ in 0..records {
        b.push(1, None, &vec![1u8; size], &[]);
    }
    b.finish()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(
        Arc::new(OsDisk),
        std::sync::Arc::new(ferry_storage::SystemClock),
        dir.path(),
        LogConfig::default(),
        1,
        0,
        1,
    )
    .unwrap();
    let data = batch_of(1000, 100);
    let h = batch::validate(&data).unwrap();
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("append_1000x100B_batch", |b| {
        b.iter(|| {
            let offset = log.next_offset();
            let idx = log.last_raft_index() + 1;
            black_box(
                log.append(&[Append::new(&data, &h, offset, 1, idx).unwrap()])
                    .unwrap(),
            );
        })
    });
    let end = log.next_offset();
    g.bench_function("read_1MiB_from_middle", |b| {
        b.iter(|| black_box(log.read(end / 2, 1 << 20, end).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
