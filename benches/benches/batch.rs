//! Batch encode and decode: what a producer pays to build a batch and a consumer to read one.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferry_protocol::batch::{self, BatchBuilder, Records};

fn build(records: usize, value: &[u8]) -> bytes::Bytes {
    let mut b = BatchBuilder::with_capacity(1_700_000_000_000, records * (value.len() + 40));
    for i in 0..records {
        b.push(
            1_700_000_000_000 + i as i64,
            Some(&(i as u64).to_le_bytes()),
            value,
            &[],
        );
    }
    b.finish()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for (records, size) in [(1000usize, 100usize), (100, 1024)] {
        let value = vec![7u8; size];
        g.throughput(Throughput::Elements(records as u64));
        g.bench_with_input(
            BenchmarkId::new("encode", format!("{records}x{size}B")),
            &records,
            |b, &n| b.iter(|| black_box(build(n, &value))),
        );
        let encoded = build(records, &value);
        g.bench_with_input(
            BenchmarkId::new("validate_crc", format!("{records}x{size}B")),
            &encoded,
            |b, e| b.iter(|| black_box(batch::validate(e).unwrap())),
        );
        g.bench_with_input(
            BenchmarkId::new("decode", format!("{records}x{size}B")),
            &encoded,
            |b, e| {
                b.iter(|| {
                    let h = batch::validate(e).unwrap();
                    let n = Records::new(e.clone(), h)
                        .map(|r| r.unwrap().value.len())
                        .sum::<usize>();
                    black_box(n)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
