//! The untrusted allocator against `buddy_system_allocator` and the system allocator.
//!
//! Run with `cargo bench --bench alloc`; `python3 benches/criterion_ratios.py` then prints the
//! medians side by side with their ratios. Both buddy allocators get a range of the same size
//! and alignment (a fresh anonymous mapping each), so they start from the same free block.
//!
//! Workloads:
//! - `pair/*`: allocate and immediately free one block of 8 B, 4 KiB or 1 MiB;
//! - `random`: keep 256 blocks of random sizes (8 B to 64 KiB, log-uniform) live, replacing one
//!   per iteration;
//! - `free_n/*`: free n live 64-byte blocks in random order (only the frees are timed), where a
//!   free list that must be scanned for the buddy makes each free O(n);
//! - `threads/*`: 16-byte alloc/free pairs on one and on two threads, each thread pinned to its
//!   own CPU; only the pairs are timed, and the slowest thread's time counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use buddy_system_allocator::LockedHeap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memmap2::{MmapMut, MmapOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use _native::alloc::{AllocConfig, UntrustedAllocator};

const RANGE: usize = 64 << 20;

/// A `RANGE`-byte run of fresh anonymous memory aligned to `RANGE`, and the mapping holding it.
fn aligned_range() -> (MmapMut, usize) {
    let map = MmapOptions::new()
        .len(2 * RANGE)
        .no_reserve_swap()
        .map_anon()
        .expect("map the benchmark range");
    let start = (map.as_ptr() as usize).next_multiple_of(RANGE);
    (map, start)
}

/// The three allocators under test, each over its own memory.
trait Subject {
    fn alloc(&self, size: usize) -> NonNull<u8>;
    fn free(&self, ptr: NonNull<u8>, size: usize);
}

/// Ours, serving only one inserted range like the buddy crate below.
struct Ours {
    alloc: UntrustedAllocator,
    _map: MmapMut,
}

impl Ours {
    fn new() -> Ours {
        let (map, start) = aligned_range();
        let alloc = UntrustedAllocator::with_config(AllocConfig {
            chunk_limit: 0,
            ..AllocConfig::default()
        })
        .unwrap();
        // SAFETY: the range lies in `map`, which lives as long as the allocator (both fields of
        // this struct, and the allocator is dropped first).
        unsafe { alloc.insert_range(start as *mut u8, RANGE, None) }.unwrap();
        Ours { alloc, _map: map }
    }
}

impl Subject for Ours {
    #[inline]
    fn alloc(&self, size: usize) -> NonNull<u8> {
        self.alloc.allocate(size, 8).unwrap()
    }
    #[inline]
    fn free(&self, ptr: NonNull<u8>, _size: usize) {
        self.alloc.deallocate(ptr.as_ptr()).unwrap();
    }
}

/// `buddy_system_allocator`'s thread-safe heap (a spin lock around its buddy lists).
struct Buddy {
    heap: LockedHeap<32>,
    _map: MmapMut,
}

impl Buddy {
    fn new() -> Buddy {
        let (map, start) = aligned_range();
        let heap = LockedHeap::<32>::new();
        // SAFETY: the range is fresh, writable memory owned by `map`, which lives as long as the
        // heap, and nothing else uses it.
        unsafe { heap.lock().init(start, RANGE) };
        Buddy { heap, _map: map }
    }
}

impl Subject for Buddy {
    #[inline]
    fn alloc(&self, size: usize) -> NonNull<u8> {
        self.heap
            .lock()
            .alloc(Layout::from_size_align(size, 8).unwrap())
            .unwrap()
    }
    #[inline]
    fn free(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: `ptr` came from `alloc` with the same layout and is freed once.
        unsafe {
            self.heap
                .lock()
                .dealloc(ptr, Layout::from_size_align(size, 8).unwrap())
        };
    }
}

/// The process's system allocator (glibc malloc here).
struct Sys;

impl Subject for Sys {
    #[inline]
    fn alloc(&self, size: usize) -> NonNull<u8> {
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { System.alloc(Layout::from_size_align(size, 8).unwrap()) }).unwrap()
    }
    #[inline]
    fn free(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: `ptr` came from `alloc` with the same layout and is freed once.
        unsafe { System.dealloc(ptr.as_ptr(), Layout::from_size_align(size, 8).unwrap()) };
    }
}

fn subjects() -> Vec<(&'static str, Box<dyn Subject>)> {
    vec![
        ("untrusted", Box::new(Ours::new())),
        ("buddy_system_allocator", Box::new(Buddy::new())),
        ("system", Box::new(Sys)),
    ]
}

fn pairs(c: &mut Criterion) {
    let subjects = subjects();
    for (label, size) in [("8B", 8), ("4KiB", 4096), ("1MiB", 1 << 20)] {
        let mut group = c.benchmark_group(format!("pair/{label}"));
        for (name, s) in &subjects {
            group.bench_function(*name, |b| {
                b.iter(|| {
                    let p = s.alloc(black_box(size));
                    s.free(black_box(p), size);
                })
            });
        }
        group.finish();
    }
}

fn random_sizes(c: &mut Criterion) {
    const LIVE: usize = 256;
    let mut rng = StdRng::seed_from_u64(7);
    let sizes: Vec<usize> = (0..4096)
        .map(|_| {
            let log = rng.random_range(3.0f64..16.0);
            (2f64.powf(log) as usize).max(1)
        })
        .collect();
    let mut group = c.benchmark_group("random");
    for (name, s) in subjects() {
        let mut live: Vec<(NonNull<u8>, usize)> =
            sizes[..LIVE].iter().map(|&n| (s.alloc(n), n)).collect();
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                let slot = i % LIVE;
                let (p, n) = live[slot];
                s.free(p, n);
                let n = sizes[i % sizes.len()];
                live[slot] = (s.alloc(black_box(n)), n);
                i = i.wrapping_add(1);
            })
        });
        for (p, n) in live {
            s.free(p, n);
        }
    }
    group.finish();
}

fn free_n(c: &mut Criterion) {
    let subjects = subjects();
    for n in [100usize, 1000, 5000] {
        let mut group = c.benchmark_group(format!("free_n/{n}"));
        group.throughput(Throughput::Elements(n as u64));
        for (name, s) in &subjects {
            let mut rng = StdRng::seed_from_u64(n as u64);
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut blocks = Vec::with_capacity(n);
                    for _ in 0..iters {
                        blocks.extend((0..n).map(|_| s.alloc(64)));
                        blocks.shuffle(&mut rng);
                        let start = Instant::now();
                        for p in blocks.drain(..) {
                            s.free(black_box(p), 64);
                        }
                        total += start.elapsed();
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

fn threads(c: &mut Criterion) {
    // Each timed iteration is this many pairs on every thread.
    const PAIRS: u64 = 10_000;
    let ours = Arc::new(Ours::new());
    let sys = Arc::new(Sys);
    let candidates: [(&str, Arc<dyn Subject + Send + Sync>); 2] =
        [("untrusted", ours), ("system", sys)];
    let mut group = c.benchmark_group("threads");
    for (name, s) in candidates {
        for threads in [1usize, 2] {
            // One element is one alloc/free pair on one thread.
            group.throughput(Throughput::Elements(threads as u64 * PAIRS));
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    // Only the pairs are timed, on each thread from a common start to its own
                    // end; the slowest thread's time counts. Starting threads, and what a
                    // thread does as it exits (the allocator gives its cache back), are not
                    // the throughput being measured.
                    let barrier = Arc::new(Barrier::new(threads));
                    let workers: Vec<_> = (0..threads)
                        .map(|cpu| {
                            let s = s.clone();
                            let barrier = barrier.clone();
                            std::thread::spawn(move || {
                                pin_to_cpu(cpu);
                                // Warm this thread's cache outside the timed part.
                                s.free(s.alloc(16), 16);
                                barrier.wait();
                                let start = Instant::now();
                                for _ in 0..iters * PAIRS {
                                    let p = s.alloc(black_box(16));
                                    s.free(black_box(p), 16);
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        .map(|w| w.join().unwrap())
                        .max()
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// Keeps the calling thread on one CPU, so that two workers never share a CPU while the
/// scheduler has yet to spread them out (a sample lasts a few tens of milliseconds).
fn pin_to_cpu(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: `set` is a zeroed, properly sized cpu_set_t that CPU_SET and sched_setaffinity
    // only read and write within.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = pairs, random_sizes, free_n, threads
}
criterion_main!(benches);
