//! Batched checkout and checkin of random items, against a plain copy of the same bytes.
//!
//! Storage: 2^18 items of 4096 + 64 bytes (about 1 GiB), every item written once beforehand so
//! that page faults are not measured. The baseline copies the same number of bytes
//! (k * (4096 + 64)) from a random, equally large, pre-touched buffer with one memcpy each for
//! data and metadata: what moving that much memory costs at best.

use std::hint::black_box;

use _native::storage::Storage;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};

const COUNT: u64 = 1 << 18;
const DATA: usize = 4096;
const META: usize = 64;
const BATCHES: [usize; 4] = [1, 17, 64, 1024];

fn filled_storage() -> Storage {
    let s = Storage::new(COUNT, DATA as u64, META as u64).unwrap();
    let chunk = 1024usize;
    let data = vec![0x5Au8; chunk * DATA];
    let meta = vec![0xA5u8; chunk * META];
    for start in (0..COUNT).step_by(chunk) {
        let idx: Vec<u64> = (start..start + chunk as u64).collect();
        s.checkin(&idx, &data, &meta).unwrap();
    }
    s
}

fn random_batches(k: usize, n: usize, rng: &mut StdRng) -> Vec<Vec<u64>> {
    (0..n)
        .map(|_| {
            // Distinct indices, as a checkin needs.
            let mut v: Vec<u64> = Vec::with_capacity(k);
            while v.len() < k {
                let i = rng.random_range(0..COUNT);
                if !v.contains(&i) {
                    v.push(i);
                }
            }
            v
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let storage = filled_storage();
    let plain_data = vec![1u8; COUNT as usize * DATA];
    let plain_meta = vec![1u8; COUNT as usize * META];
    let mut rng = StdRng::seed_from_u64(7);

    let mut group = c.benchmark_group("storage");
    for k in BATCHES {
        group.throughput(Throughput::Bytes((k * (DATA + META)) as u64));
        let batches = random_batches(k, 64, &mut rng);
        let mut out_data = vec![0u8; k * DATA];
        let mut out_meta = vec![0u8; k * META];
        let mut which = 0usize;

        group.bench_with_input(BenchmarkId::new("checkout", k), &k, |b, _| {
            b.iter(|| {
                which = (which + 1) % batches.len();
                storage
                    .checkout(&batches[which], &mut out_data, &mut out_meta)
                    .unwrap();
                black_box(&out_data);
            })
        });
        group.bench_with_input(BenchmarkId::new("checkin", k), &k, |b, _| {
            b.iter(|| {
                which = (which + 1) % batches.len();
                storage
                    .checkin(&batches[which], black_box(&out_data), &out_meta)
                    .unwrap();
            })
        });
        let starts: Vec<usize> = (0..64)
            .map(|_| rng.random_range(0..COUNT as usize - k))
            .collect();
        group.bench_with_input(BenchmarkId::new("memcpy", k), &k, |b, _| {
            b.iter(|| {
                which = (which + 1) % starts.len();
                let s = starts[which];
                out_data.copy_from_slice(&plain_data[s * DATA..(s + k) * DATA]);
                out_meta.copy_from_slice(&plain_meta[s * META..(s + k) * META]);
                black_box(&out_data);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
