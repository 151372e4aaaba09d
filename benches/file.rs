//! A file storage's positioned I/O against the alternatives it was chosen over: a pool of
//! threads that each wait on one read, and a shared mapping of the same file.
//!
//! Run: `cargo bench --bench file` (part of `make bench-file`). Two files of 4 GiB of data
//! (`ORAMSTORE_BENCH_GIB` changes it), one of 4 KiB items and one of 16 KiB items with 64 bytes
//! of metadata each, are created in `ORAMSTORE_BENCH_DIR` (default: the temporary directory),
//! written in full, and removed at the end. For each item size and batch size, random
//! distinct items (data and metadata) are read in batches by:
//!
//! * `storage`: the storage's checkout (`pread` with `RWF_NOWAIT` of what the page cache holds,
//!   `POSIX_FADV_WILLNEED` for the rest, then `pread` of the rest, all on the calling thread);
//! * `pread pool`: `pread` of each item's data and metadata as tasks of a pool of 32 threads;
//! * `mmap`: a `MAP_SHARED` mapping of the file (`MADV_RANDOM`), copied out with memcpy on the
//!   calling thread;
//! * `mmap+willneed`: the same, after `MADV_WILLNEED` of every item of the batch;
//! * `mmap pool`: the same mapping, one item per task on the pool of 32 threads.
//!
//! Each is timed cold (the file's pages dropped from the page cache before the run) and warm
//! (the same items again). Checkins are timed too, cold: the storage's writes against memcpy
//! into the mapping, which faults every page in from the disk before it can be written.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use _native::file::Header;
use _native::storage::Storage;
use memmap2::MmapMut;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use rayon::prelude::*;

const META: usize = 64;
/// Threads of the pools that the alternatives use to keep several reads in flight.
const THREADS: usize = 32;
const BATCHES: [usize; 2] = [16, 256];
/// Bytes of data read per cold run: few enough that the run's own reads rarely hit the cache.
const RUN_BYTES: usize = 64 << 20;

/// Drops the file's pages from the page cache (after writing back any dirty ones).
fn drop_cache(path: &Path) {
    let file = File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: posix_fadvise only reads its arguments.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed");
}

/// A file storage of `gib` GiB of `data_size`-byte items, every item written.
fn filled(path: &Path, gib: usize, data_size: usize) -> Storage {
    let _ = std::fs::remove_file(path);
    let count = ((gib << 30) / data_size) as u64;
    let s = Storage::create_file(path, count, data_size as u64, META as u64).unwrap();
    let chunk = (4 << 20) / data_size;
    let data: Vec<u8> = (0..chunk * data_size).map(|b| (b * 7 + 3) as u8).collect();
    let meta = vec![0xA5u8; chunk * META];
    for start in (0..count).step_by(chunk) {
        let end = (start + chunk as u64).min(count);
        let idx: Vec<u64> = (start..end).collect();
        let k = idx.len();
        s.checkin(&idx, &data[..k * data_size], &meta[..k * META])
            .unwrap();
    }
    s.flush().unwrap();
    s
}

/// The file's mapping and where its segments start.
struct Mapped {
    map: MmapMut,
    data_at: usize,
    meta_at: usize,
    data_size: usize,
}

impl Mapped {
    fn new(path: &Path, storage: &Storage) -> Mapped {
        let header = Header::new(*storage.layout()).unwrap();
        let file = File::options().read(true).write(true).open(path).unwrap();
        // SAFETY: the benchmark is the only user of the file while the mapping lives, and
        // nothing truncates it.
        let map = unsafe { MmapMut::map_mut(&file) }.unwrap();
        map.advise(memmap2::Advice::Random).unwrap();
        Mapped {
            map,
            data_at: header.data_offset as usize,
            meta_at: header.meta_offset as usize,
            data_size: storage.layout().data_size,
        }
    }

    /// Unmaps every page from the process, so that the page cache may drop them: the kernel
    /// keeps mapped pages however it is advised.
    fn evict(&self) {
        // SAFETY: the range is the mapping's own; `MADV_DONTNEED` on a shared file mapping only
        // removes the page table entries, and the next access maps the file's page again.
        let rc = unsafe {
            libc::madvise(
                self.map.as_ptr() as *mut libc::c_void,
                self.map.len(),
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0, "madvise failed");
    }

    /// The page-aligned start and the length of the pages that hold `len` bytes at `at`.
    fn pages(&self, at: usize, len: usize) -> (*mut libc::c_void, usize) {
        let start = at & !4095;
        // SAFETY: pointer arithmetic within the mapping.
        let ptr = unsafe { self.map.as_ptr().add(start) };
        (ptr as *mut libc::c_void, at + len - start)
    }

    /// Asks the kernel to read every page of the batch's items into the page cache.
    fn will_need(&self, idx: &[u64]) {
        for &i in idx {
            let i = i as usize;
            for (at, len) in [
                (self.data_at + i * self.data_size, self.data_size),
                (self.meta_at + i * META, META),
            ] {
                let (ptr, len) = self.pages(at, len);
                // SAFETY: the range lies within the mapping; the advice changes no contents.
                unsafe { libc::madvise(ptr, len, libc::MADV_WILLNEED) };
            }
        }
    }

    fn gather_one(&self, i: u64, data: &mut [u8], meta: &mut [u8]) {
        let i = i as usize;
        data.copy_from_slice(&self.map[self.data_at + i * self.data_size..][..self.data_size]);
        meta.copy_from_slice(&self.map[self.meta_at + i * META..][..META]);
    }

    fn gather(&self, idx: &[u64], data: &mut [u8], meta: &mut [u8]) {
        for ((&i, d), m) in idx
            .iter()
            .zip(data.chunks_mut(self.data_size))
            .zip(meta.chunks_mut(META))
        {
            self.gather_one(i, d, m);
        }
    }

    fn gather_par(&self, pool: &rayon::ThreadPool, idx: &[u64], data: &mut [u8], meta: &mut [u8]) {
        pool.install(|| {
            idx.par_iter()
                .zip(data.par_chunks_mut(self.data_size))
                .zip(meta.par_chunks_mut(META))
                .with_max_len(1)
                .for_each(|((&i, d), m)| self.gather_one(i, d, m))
        });
    }

    /// `pread` of each item's data and metadata, one task each on `pool`.
    fn pread_par(
        &self,
        file: &File,
        pool: &rayon::ThreadPool,
        idx: &[u64],
        data: &mut [u8],
        meta: &mut [u8],
    ) {
        use std::os::unix::fs::FileExt;
        pool.scope(|scope| {
            for ((&i, d), m) in idx
                .iter()
                .zip(data.chunks_mut(self.data_size))
                .zip(meta.chunks_mut(META))
            {
                let i = i as usize;
                let data_at = (self.data_at + i * self.data_size) as u64;
                let meta_at = (self.meta_at + i * META) as u64;
                scope.spawn(move |_| file.read_exact_at(d, data_at).unwrap());
                scope.spawn(move |_| file.read_exact_at(m, meta_at).unwrap());
            }
        });
    }

    fn scatter(&mut self, idx: &[u64], data: &[u8], meta: &[u8]) {
        for ((&i, d), m) in idx
            .iter()
            .zip(data.chunks(self.data_size))
            .zip(meta.chunks(META))
        {
            let i = i as usize;
            self.map[self.data_at + i * self.data_size..][..self.data_size].copy_from_slice(d);
            self.map[self.meta_at + i * META..][..META].copy_from_slice(m);
        }
    }
}

/// Items per second for `items` in batches of `batch`, moved by `run`.
fn time(items: &[u64], batch: usize, mut run: impl FnMut(&[u64])) -> f64 {
    let start = Instant::now();
    for chunk in items.chunks(batch) {
        run(chunk);
    }
    items.len() as f64 / start.elapsed().as_secs_f64()
}

const VARIANTS: [&str; 5] = [
    "storage",
    "pread pool",
    "mmap",
    "mmap+willneed",
    "mmap pool",
];

fn main() {
    let dir: PathBuf = std::env::var_os("ORAMSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let gib: usize = std::env::var("ORAMSTORE_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    println!(
        "{gib} GiB of data per file in {}; items/s of random distinct items, data + {META} bytes \
         of metadata each",
        dir.display()
    );
    print!("{:>5} {:>6} {:>5}", "item", "batch", "cache");
    for name in VARIANTS {
        print!(" {name:>13}");
    }
    println!(" {:>16}", "storage/best else");
    for data_size in [4096usize, 16384] {
        let path = dir.join(format!("oramstore-bench-file-{data_size}.oram"));
        let storage = filled(&path, gib, data_size);
        let file = File::open(&path).unwrap();
        let mut map = Mapped::new(&path, &storage);
        let mut order: Vec<u64> = (0..storage.layout().count).collect();
        order.shuffle(&mut rng);
        let per_run = RUN_BYTES / data_size;
        let mut runs = order.chunks(per_run);
        let mut data = vec![0u8; 256 * data_size];
        let mut meta = vec![0u8; 256 * META];
        for batch in BATCHES {
            let items = runs.next().unwrap();
            for warm in [false, true] {
                let mut rates = [0.0f64; VARIANTS.len()];
                for (variant, rate) in rates.iter_mut().enumerate() {
                    if !warm {
                        map.evict();
                        drop_cache(&path);
                    } else {
                        // Warm means cached and, for the mapping, mapped: one pass first.
                        let (mut d, mut m) = (
                            vec![0; items.len() * data_size],
                            vec![0; items.len() * META],
                        );
                        map.gather(items, &mut d, &mut m);
                    }
                    *rate = time(items, batch, |idx| {
                        let (d, m) = (
                            &mut data[..idx.len() * data_size],
                            &mut meta[..idx.len() * META],
                        );
                        match variant {
                            0 => storage.checkout(idx, d, m).unwrap(),
                            1 => map.pread_par(&file, &pool, idx, d, m),
                            2 => map.gather(idx, d, m),
                            3 => {
                                map.will_need(idx);
                                map.gather(idx, d, m)
                            }
                            _ => map.gather_par(&pool, idx, d, m),
                        }
                    });
                }
                print!(
                    "{:>4}K {batch:>6} {:>5}",
                    data_size >> 10,
                    if warm { "warm" } else { "cold" }
                );
                for rate in rates {
                    print!(" {rate:>13.0}");
                }
                let best_else = rates[1..].iter().copied().fold(0.0, f64::max);
                println!(" {:>16.2}", rates[0] / best_else);
            }
        }
        // Cold checkins: items whose pages are not in the page cache.
        let batch = 16;
        let input = vec![0x3Cu8; batch * data_size];
        let input_meta = vec![0xC3u8; batch * META];
        let mut rates = [0.0f64; 2];
        for (variant, rate) in rates.iter_mut().enumerate() {
            let items = runs.next().unwrap();
            map.evict();
            drop_cache(&path);
            *rate = time(items, batch, |idx| {
                let (d, m) = (
                    &input[..idx.len() * data_size],
                    &input_meta[..idx.len() * META],
                );
                match variant {
                    0 => storage.checkin(idx, d, m).unwrap(),
                    _ => map.scatter(idx, d, m),
                }
            });
        }
        println!(
            "{:>4}K {batch:>6} {:>5} {:>13.0} {:>13} {:>13.0} {:>13} {:>13} {:>16.2}  checkin",
            data_size >> 10,
            "cold",
            rates[0],
            "",
            rates[1],
            "",
            "",
            rates[0] / rates[1],
        );
        drop(map);
        storage.release();
        std::fs::remove_file(&path).unwrap();
    }
}
