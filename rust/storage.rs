//! Fixed-size block storage in untrusted memory.
//!
//! A [`Storage`] holds `count` items, each a data part of `data_size` bytes and a metadata part
//! of `meta_size` bytes, in two separate [`Segment`]s. Nothing is initialised when it is
//! created: the data segment may read as anything until written (callers never rely on it), and
//! the metadata segment reads zero until written, which is what lets the trusted side tell a
//! never-written item apart.
//!
//! Items move in batches: [`Storage::checkout`] copies the items at a list of indices out, in
//! the order given, and [`Storage::checkin`] copies them back. Every argument is checked before
//! a single byte moves, so a rejected call leaves both the storage and the caller's buffers as
//! they were.
//!
//! The items may also live in a file ([`Storage::create_file`], [`Storage::open_file`]; see
//! [`crate::file`]): the same calls, with the same checks, then read and write the file, and
//! [`Storage::flush`] makes what was written durable.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use rayon::prelude::*;

use crate::copy::copy_bytes;
use crate::file::{FileError, FileStore};
use crate::segment::Segment;

/// Everything that can go wrong with a storage call.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A storage needs at least one item.
    #[error("count must be positive, got 0")]
    ZeroCount,
    /// Item sizes must be positive.
    #[error("{which} must be positive, got 0")]
    ZeroSize {
        /// `data_size` or `meta_size`.
        which: &'static str,
    },
    /// `count * size` does not fit the address space.
    #[error("{count} items of {size} bytes overflow the address space")]
    TooLarge {
        /// Requested item count.
        count: u64,
        /// Item size that overflowed.
        size: u64,
    },
    /// An index is not below `count`.
    #[error("index {index} (position {position}) is out of range for a storage of {count} items")]
    IndexOutOfRange {
        /// The offending index.
        index: u64,
        /// Its position in the caller's index list.
        position: usize,
        /// The storage's item count.
        count: u64,
    },
    /// An index appears more than once in one checkin.
    #[error("index {index} appears twice in one checkin (positions {first} and {second})")]
    DuplicateIndex {
        /// The repeated index.
        index: u64,
        /// First position it appears at.
        first: usize,
        /// Second position it appears at.
        second: usize,
    },
    /// A buffer has the wrong number of bytes for the batch.
    #[error(
        "{which} buffer holds {actual} bytes, expected {expected} ({items} items of {size} bytes)"
    )]
    BufferLength {
        /// `data` or `meta`.
        which: &'static str,
        /// Bytes the batch needs.
        expected: usize,
        /// Bytes the buffer has.
        actual: usize,
        /// Items in the batch.
        items: usize,
        /// Bytes per item.
        size: usize,
    },
    /// A caller buffer shares memory with the storage itself.
    #[error("{which} buffer overlaps the storage's own memory")]
    BufferOverlaps {
        /// `data` or `meta`.
        which: &'static str,
    },
    /// A placement region is smaller than the segment it must hold.
    #[error("{which} region holds {actual} bytes, the segment needs {expected}")]
    RegionTooSmall {
        /// `data` or `meta`.
        which: &'static str,
        /// Bytes the segment needs.
        expected: usize,
        /// Bytes the region has.
        actual: usize,
    },
    /// The storage was released; nothing can be done with it any more.
    #[error("the storage has been released")]
    Released,
    /// The kernel refused to map the memory.
    #[error("could not map {bytes} bytes of untrusted memory: {source}")]
    Map {
        /// Bytes requested.
        bytes: usize,
        /// What the kernel said.
        source: io::Error,
    },
    /// A query to the kernel failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Shape of a storage: how many items and how big each part is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of items.
    pub count: u64,
    /// Bytes of data per item.
    pub data_size: usize,
    /// Bytes of metadata per item.
    pub meta_size: usize,
}

impl Layout {
    /// Checks the sizes: all positive and both segments addressable.
    pub fn new(count: u64, data_size: u64, meta_size: u64) -> Result<Layout, StorageError> {
        if count == 0 {
            return Err(StorageError::ZeroCount);
        }
        if data_size == 0 {
            return Err(StorageError::ZeroSize { which: "data_size" });
        }
        if meta_size == 0 {
            return Err(StorageError::ZeroSize { which: "meta_size" });
        }
        for size in [data_size, meta_size] {
            let fits = count
                .checked_mul(size)
                .is_some_and(|bytes| bytes <= isize::MAX as u64);
            if !fits {
                return Err(StorageError::TooLarge { count, size });
            }
        }
        // Both products fit in isize, and so does their sum only if checked.
        let total = count * data_size + count * meta_size;
        if total > isize::MAX as u64 {
            return Err(StorageError::TooLarge {
                count,
                size: data_size + meta_size,
            });
        }
        Ok(Layout {
            count,
            data_size: data_size as usize,
            meta_size: meta_size as usize,
        })
    }

    /// Bytes of the data segment.
    pub fn data_bytes(&self) -> usize {
        self.count as usize * self.data_size
    }

    /// Bytes of the metadata segment.
    pub fn meta_bytes(&self) -> usize {
        self.count as usize * self.meta_size
    }

    /// Bytes of both segments.
    pub fn nbytes(&self) -> usize {
        self.data_bytes() + self.meta_bytes()
    }

    /// Checks every index against `count`.
    pub fn check_indices(&self, indices: &[u64]) -> Result<(), StorageError> {
        match indices.iter().position(|&i| i >= self.count) {
            None => Ok(()),
            Some(position) => Err(StorageError::IndexOutOfRange {
                index: indices[position],
                position,
                count: self.count,
            }),
        }
    }

    /// Checks that a data and a metadata buffer have exactly the room for `items` items.
    pub fn check_buffers(
        &self,
        items: usize,
        data_len: usize,
        meta_len: usize,
    ) -> Result<(), StorageError> {
        for (which, size, actual) in [
            ("data", self.data_size, data_len),
            ("meta", self.meta_size, meta_len),
        ] {
            // `items * size` cannot overflow when it equals a real buffer's length; if it
            // overflows, no buffer can match it.
            let expected = items.checked_mul(size);
            if expected != Some(actual) {
                return Err(StorageError::BufferLength {
                    which,
                    expected: expected.unwrap_or(usize::MAX),
                    actual,
                    items,
                    size,
                });
            }
        }
        Ok(())
    }
}

/// Rejects an index list in which some index appears twice.
pub fn check_distinct(indices: &[u64]) -> Result<(), StorageError> {
    // A path of a tree ORAM is a few dozen indices: comparing pairs is quicker than sorting.
    const PAIRWISE_LIMIT: usize = 32;
    if indices.len() <= PAIRWISE_LIMIT {
        for (second, &index) in indices.iter().enumerate() {
            if let Some(first) = indices[..second].iter().position(|&j| j == index) {
                return Err(StorageError::DuplicateIndex {
                    index,
                    first,
                    second,
                });
            }
        }
        return Ok(());
    }
    let mut sorted: Vec<(u64, usize)> = indices.iter().copied().zip(0..).collect();
    sorted.sort_unstable();
    match sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        None => Ok(()),
        Some(w) => Err(StorageError::DuplicateIndex {
            index: w[0].0,
            first: w[0].1,
            second: w[1].1,
        }),
    }
}

/// A stretch of the batch whose indices are consecutive, so that its items lie side by side
/// both in the segment and in the caller's buffer and move with one copy.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// The first index of the run.
    pub(crate) first: u64,
    /// The position of that index in the batch.
    pub(crate) position: usize,
    /// How many indices the run has.
    pub(crate) len: usize,
}

/// The runs of a batch, in batch order: each starts where the previous one ended.
pub(crate) fn runs(indices: &[u64]) -> impl Iterator<Item = Run> + '_ {
    let mut position = 0;
    std::iter::from_fn(move || {
        let rest = indices.get(position..).filter(|r| !r.is_empty())?;
        let first = rest[0];
        let len = 1 + rest
            .windows(2)
            .take_while(|w| w[0].checked_add(1) == Some(w[1]))
            .count();
        let run = Run {
            first,
            position,
            len,
        };
        position += len;
        Some(run)
    })
}

/// Batches that move at least this many bytes are split across the thread pool.
///
/// A single core copying items at random addresses waits on memory most of the time; two cores
/// keep twice as many misses in flight. Below this size the hand-off costs more than it saves.
pub const PARALLEL_BYTES: usize = 1 << 20;

/// Copies the items at `indices` of one segment into `out`, item `k` at offset `k * size`.
///
/// # Safety
///
/// Every index must be below the segment's item count, the segment must stay mapped for the
/// call, and `out` (exactly `indices.len() * size` bytes) must not overlap it.
unsafe fn gather(seg: &Segment, size: usize, indices: &[u64], out: &mut [u8]) {
    let base = seg.as_ptr();
    for run in runs(indices) {
        let bytes = run.len * size;
        let to = &mut out[run.position * size..][..bytes];
        // SAFETY: the caller's contract puts the run's `bytes` inside the segment, and `to` is
        // part of `out`, which does not overlap it.
        unsafe { copy_bytes(base.add(run.first as usize * size), to.as_mut_ptr(), bytes) };
    }
}

/// Copies item `k` of `input` to the item at `indices[k]` of one segment.
///
/// # Safety
///
/// As for [`gather`], and no other copy may write the same items at the same time.
unsafe fn scatter(seg: &Segment, size: usize, indices: &[u64], input: &[u8]) {
    let base = seg.as_ptr();
    for run in runs(indices) {
        let bytes = run.len * size;
        let from = &input[run.position * size..][..bytes];
        // SAFETY: the caller's contract puts the run's target inside the segment, written by
        // no other copy, and `from` does not overlap it.
        unsafe { copy_bytes(from.as_ptr(), base.add(run.first as usize * size), bytes) };
    }
}

/// Items per parallel part, or `None` if the batch is copied on the calling thread.
fn parallel_part(layout: &Layout, items: usize) -> Option<usize> {
    let threads = rayon::current_num_threads();
    let bytes = items.saturating_mul(layout.data_size + layout.meta_size);
    if threads < 2 || items < 2 || bytes < PARALLEL_BYTES {
        return None;
    }
    Some(items.div_ceil(threads))
}

static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Bytes of segments held by all live storages of this process.
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.load(Ordering::Relaxed)
}

/// The two segments of a live storage. Dropping them gives the memory back and updates the
/// accounting.
struct Segments {
    data: Segment,
    meta: Segment,
}

/// Where a live storage keeps its items. Dropping it gives the memory back or closes the file.
enum Backend {
    Memory(Segments),
    File(FileStore),
}

/// Fixed-size items in two lazily mapped segments or in a file, moved in and out in batches.
///
/// Checkouts take a shared lock and may run in parallel; checkins and release take the lock
/// exclusively, so a release never unmaps memory (or closes a file) that a copy is still using.
pub struct Storage {
    layout: Layout,
    serial: u64,
    accounted: u64,
    /// The file's path, for a storage in a file; kept after release for the description.
    path: Option<PathBuf>,
    backend: RwLock<Option<Backend>>,
}

impl Storage {
    /// Creates a storage in fresh anonymous mappings: no page is touched.
    pub fn new(count: u64, data_size: u64, meta_size: u64) -> Result<Storage, StorageError> {
        let layout = Layout::new(count, data_size, meta_size)?;
        let map = |bytes: usize| {
            Segment::map_anonymous(bytes).map_err(|source| StorageError::Map { bytes, source })
        };
        let data = map(layout.data_bytes())?;
        let meta = map(layout.meta_bytes())?;
        Ok(Storage::assemble_segments(layout, data, meta))
    }

    /// Creates a storage in segments placed elsewhere (an allocator's blocks, say).
    ///
    /// The data segment is used as it is; a metadata segment that is not a fresh anonymous
    /// mapping is zeroed once here, so never-written items still read zero metadata.
    pub fn with_segments(
        layout: Layout,
        data: Segment,
        mut meta: Segment,
    ) -> Result<Storage, StorageError> {
        for (which, seg, expected) in [
            ("data", &data, layout.data_bytes()),
            ("meta", &meta, layout.meta_bytes()),
        ] {
            if seg.len() < expected {
                return Err(StorageError::RegionTooSmall {
                    which,
                    expected,
                    actual: seg.len(),
                });
            }
        }
        if !meta.is_anonymous() {
            meta.zero();
        }
        Ok(Storage::assemble_segments(layout, data, meta))
    }

    /// Creates a storage in a new file at `path`, which must not exist.
    ///
    /// Only the header is written and the file's length set: the file is sparse, and takes
    /// disk space as items are written. Never-written items read zero, data and metadata.
    pub fn create_file(
        path: &Path,
        count: u64,
        data_size: u64,
        meta_size: u64,
    ) -> Result<Storage, StorageError> {
        let layout = Layout::new(count, data_size, meta_size)?;
        let path = absolute(path);
        let file = FileStore::create(&path, layout)?;
        Ok(Storage::assemble_file(file))
    }

    /// Opens the storage in the file at `path`, made by [`Storage::create_file`]. Its header
    /// gives the sizes; a size given here must match it.
    pub fn open_file(
        path: &Path,
        count: Option<u64>,
        data_size: Option<u64>,
        meta_size: Option<u64>,
    ) -> Result<Storage, StorageError> {
        let path = absolute(path);
        let file = FileStore::open(&path)?;
        let found = file.header().layout;
        for (which, given, found) in [
            ("count", count, found.count),
            ("data_size", data_size, found.data_size as u64),
            ("meta_size", meta_size, found.meta_size as u64),
        ] {
            if let Some(given) = given.filter(|&given| given != found) {
                return Err(FileError::Mismatch {
                    path,
                    which,
                    found,
                    given,
                }
                .into());
            }
        }
        Ok(Storage::assemble_file(file))
    }

    fn assemble_segments(layout: Layout, data: Segment, meta: Segment) -> Storage {
        let place = data.kind().to_string();
        let bytes = data.len() + meta.len();
        let backend = Backend::Memory(Segments { data, meta });
        Storage::assemble(layout, backend, bytes, None, place)
    }

    fn assemble_file(file: FileStore) -> Storage {
        let layout = file.header().layout;
        let path = file.path().to_owned();
        let place = format!("file {}", path.display());
        // A file's logical size is accounted like the virtual size of a mapping.
        let bytes = layout.nbytes();
        Storage::assemble(layout, Backend::File(file), bytes, Some(path), place)
    }

    fn assemble(
        layout: Layout,
        backend: Backend,
        bytes: usize,
        path: Option<PathBuf>,
        place: String,
    ) -> Storage {
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let accounted = bytes as u64;
        let total = ALLOCATED_BYTES.fetch_add(accounted, Ordering::Relaxed) + accounted;
        log::info!(
            target: "oramstore",
            "allocated untrusted storage #{serial} in {place}: count={} data_size={} meta_size={} \
             bytes={accounted} total={total}",
            layout.count,
            layout.data_size,
            layout.meta_size,
        );
        Storage {
            layout,
            serial,
            accounted,
            path,
            backend: RwLock::new(Some(backend)),
        }
    }

    /// The storage's shape.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether [`Storage::release`] has been called.
    pub fn is_released(&self) -> bool {
        self.backend.read().is_none()
    }

    /// The file the storage keeps its items in (an absolute path), or `None` for a storage in
    /// memory. Stays readable after release.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Copies the items at `indices` into `data_out` and `meta_out`, item `k` of the batch at
    /// offset `k * size`. An index may repeat.
    pub fn checkout(
        &self,
        indices: &[u64],
        data_out: &mut [u8],
        meta_out: &mut [u8],
    ) -> Result<(), StorageError> {
        let layout = &self.layout;
        layout.check_buffers(indices.len(), data_out.len(), meta_out.len())?;
        layout.check_indices(indices)?;
        let guard = self.backend.read();
        let segs = match guard.as_ref().ok_or(StorageError::Released)? {
            Backend::Memory(segs) => segs,
            Backend::File(file) => return file.checkout(indices, data_out, meta_out),
        };
        check_no_overlap(segs, data_out.as_ptr(), data_out.len(), "data")?;
        check_no_overlap(segs, meta_out.as_ptr(), meta_out.len(), "meta")?;
        let (ds, ms) = (layout.data_size, layout.meta_size);
        let copy = |idx: &[u64], d: &mut [u8], m: &mut [u8]| {
            // SAFETY: every index is below `count` (checked), the read guard keeps the
            // segments mapped, and the output buffers do not overlap them (checked).
            unsafe {
                gather(&segs.data, ds, idx, d);
                gather(&segs.meta, ms, idx, m);
            }
        };
        match parallel_part(layout, indices.len()) {
            None => copy(indices, data_out, meta_out),
            Some(per) => indices
                .par_chunks(per)
                .zip(data_out.par_chunks_mut(per * ds))
                .zip(meta_out.par_chunks_mut(per * ms))
                .for_each(|((idx, d), m)| copy(idx, d, m)),
        }
        Ok(())
    }

    /// Copies item `k` of `data_in` and `meta_in` to the item at `indices[k]`. Indices must be
    /// distinct.
    ///
    /// In a file, the items are written to the page cache: [`Storage::flush`] makes them
    /// durable.
    pub fn checkin(
        &self,
        indices: &[u64],
        data_in: &[u8],
        meta_in: &[u8],
    ) -> Result<(), StorageError> {
        let layout = &self.layout;
        layout.check_buffers(indices.len(), data_in.len(), meta_in.len())?;
        layout.check_indices(indices)?;
        check_distinct(indices)?;
        let guard = self.backend.write();
        let segs = match guard.as_ref().ok_or(StorageError::Released)? {
            Backend::Memory(segs) => segs,
            Backend::File(file) => return file.checkin(indices, data_in, meta_in),
        };
        check_no_overlap(segs, data_in.as_ptr(), data_in.len(), "data")?;
        check_no_overlap(segs, meta_in.as_ptr(), meta_in.len(), "meta")?;
        let (ds, ms) = (layout.data_size, layout.meta_size);
        let copy = |idx: &[u64], d: &[u8], m: &[u8]| {
            // SAFETY: every index is below `count` and distinct (checked), so parallel parts
            // write disjoint items; the write guard keeps the segments mapped and excludes
            // every other copy; the inputs do not overlap them (checked).
            unsafe {
                scatter(&segs.data, ds, idx, d);
                scatter(&segs.meta, ms, idx, m);
            }
        };
        match parallel_part(layout, indices.len()) {
            None => copy(indices, data_in, meta_in),
            Some(per) => indices
                .par_chunks(per)
                .zip(data_in.par_chunks(per * ds))
                .zip(meta_in.par_chunks(per * ms))
                .for_each(|((idx, d), m)| copy(idx, d, m)),
        }
        Ok(())
    }

    /// Makes every checkin so far durable: syncs the file's data to the disk. Memory is never
    /// durable, so for a storage in memory this does nothing.
    pub fn flush(&self) -> Result<(), StorageError> {
        match self.backend.read().as_ref() {
            None => Err(StorageError::Released),
            Some(Backend::Memory(_)) => Ok(()),
            Some(Backend::File(file)) => file.flush(),
        }
    }

    /// Gives the memory back, or closes the file, at once. Returns false if it was already
    /// released. A file stays on disk; what was not flushed reaches it when the kernel writes
    /// it back, unless the system crashes first.
    ///
    /// Waits for copies in progress on other threads to finish.
    pub fn release(&self) -> bool {
        let taken = self.backend.write().take();
        let was_live = taken.is_some();
        drop(taken);
        if was_live {
            self.account_release();
        }
        was_live
    }

    fn account_release(&self) {
        let total = ALLOCATED_BYTES.fetch_sub(self.accounted, Ordering::Relaxed) - self.accounted;
        log::info!(
            target: "oramstore",
            "released untrusted storage #{}: count={} data_size={} meta_size={} bytes={} total={total}",
            self.serial,
            self.layout.count,
            self.layout.data_size,
            self.layout.meta_size,
            self.accounted,
        );
    }

    /// Bytes of the storage resident in the process's physical memory. Always 0 for a file:
    /// its bytes are in the kernel's page cache, which the process does not hold.
    pub fn resident_bytes(&self) -> Result<usize, StorageError> {
        match self.backend.read().as_ref() {
            None => Err(StorageError::Released),
            Some(Backend::Memory(segs)) => {
                Ok(segs.data.resident_bytes()? + segs.meta.resident_bytes()?)
            }
            Some(Backend::File(_)) => Ok(0),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if self.backend.get_mut().take().is_some() {
            self.account_release();
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("serial", &self.serial)
            .field("layout", &self.layout)
            .field("path", &self.path)
            .field("released", &self.is_released())
            .finish()
    }
}

/// `path` made absolute against the current directory, so that the storage's path names the
/// same file after a change of directory. A path that cannot be made absolute (an empty one)
/// is kept as it is, and opening it fails.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn check_no_overlap(
    segs: &Segments,
    ptr: *const u8,
    len: usize,
    which: &'static str,
) -> Result<(), StorageError> {
    if segs.data.overlaps(ptr, len) || segs.meta.overlaps(ptr, len) {
        return Err(StorageError::BufferOverlaps { which });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(index: u64, size: usize, salt: u8) -> Vec<u8> {
        (0..size)
            .map(|b| (index as u8).wrapping_mul(31) ^ (b as u8) ^ salt)
            .collect()
    }

    #[test]
    fn consecutive_indices_form_runs() {
        let got: Vec<(u64, usize, usize)> = runs(&[4, 5, 6, 1, 9, 10, 10, u64::MAX, 0])
            .map(|r| (r.first, r.position, r.len))
            .collect();
        assert_eq!(
            got,
            [
                (4, 0, 3),
                (1, 3, 1),
                (9, 4, 2),
                (10, 6, 1),
                (u64::MAX, 7, 1),
                (0, 8, 1)
            ]
        );
        assert_eq!(runs(&[]).count(), 0);
    }

    #[test]
    fn unwritten_metadata_reads_zero() {
        let s = Storage::new(1 << 20, 4096, 64).unwrap();
        let mut data = vec![0u8; 3 * 4096];
        let mut meta = vec![0xFFu8; 3 * 64];
        s.checkout(&[0, 77, (1 << 20) - 1], &mut data, &mut meta)
            .unwrap();
        assert!(meta.iter().all(|&b| b == 0));
    }

    #[test]
    fn creation_touches_no_memory() {
        let s = Storage::new(1 << 20, 4096, 64).unwrap();
        assert_eq!(s.resident_bytes().unwrap(), 0);
        assert_eq!(s.layout().nbytes(), (1 << 20) * (4096 + 64));
    }

    #[test]
    fn checkin_then_checkout_round_trips_in_request_order() {
        let s = Storage::new(100, 24, 8).unwrap();
        let idx = [5u64, 99, 0];
        let data: Vec<u8> = idx.iter().flat_map(|&i| item(i, 24, 1)).collect();
        let meta: Vec<u8> = idx.iter().flat_map(|&i| item(i, 8, 2)).collect();
        s.checkin(&idx, &data, &meta).unwrap();
        let order = [0u64, 5, 5, 99];
        let mut d = vec![0u8; 4 * 24];
        let mut m = vec![0u8; 4 * 8];
        s.checkout(&order, &mut d, &mut m).unwrap();
        for (k, &i) in order.iter().enumerate() {
            assert_eq!(d[k * 24..(k + 1) * 24], item(i, 24, 1)[..]);
            assert_eq!(m[k * 8..(k + 1) * 8], item(i, 8, 2)[..]);
        }
    }

    #[test]
    fn batches_split_across_threads_round_trip() {
        // Large enough to take the parallel path, with runs that cross the split points.
        let s = Storage::new(8192, 1000, 24).unwrap();
        let mut idx: Vec<u64> = (0..8192).rev().step_by(3).collect();
        idx.sort_unstable_by_key(|&i| (i * 2654435761) % 8192);
        idx.dedup();
        assert!(idx.len() * 1000 >= PARALLEL_BYTES);
        let data: Vec<u8> = idx.iter().flat_map(|&i| item(i, 1000, 5)).collect();
        let meta: Vec<u8> = idx.iter().flat_map(|&i| item(i, 24, 6)).collect();
        s.checkin(&idx, &data, &meta).unwrap();
        let order: Vec<u64> = idx
            .iter()
            .rev()
            .copied()
            .chain(idx[..10].iter().copied())
            .collect();
        let mut d = vec![0u8; order.len() * 1000];
        let mut m = vec![0u8; order.len() * 24];
        s.checkout(&order, &mut d, &mut m).unwrap();
        for (k, &i) in order.iter().enumerate() {
            assert_eq!(
                d[k * 1000..(k + 1) * 1000],
                item(i, 1000, 5)[..],
                "item {i}"
            );
            assert_eq!(m[k * 24..(k + 1) * 24], item(i, 24, 6)[..], "item {i}");
        }
        // Consecutive indices across the split: one long run.
        let run: Vec<u64> = (100..3100).collect();
        let data: Vec<u8> = run.iter().flat_map(|&i| item(i, 1000, 7)).collect();
        s.checkin(&run, &data, &vec![0; run.len() * 24]).unwrap();
        let mut d = vec![0u8; run.len() * 1000];
        let mut m = vec![0u8; run.len() * 24];
        s.checkout(&run, &mut d, &mut m).unwrap();
        assert_eq!(d, data);
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(matches!(
            Storage::new(0, 8, 8),
            Err(StorageError::ZeroCount)
        ));
        assert!(matches!(
            Storage::new(1, 0, 8),
            Err(StorageError::ZeroSize { which: "data_size" })
        ));
        assert!(matches!(
            Storage::new(1, 8, 0),
            Err(StorageError::ZeroSize { which: "meta_size" })
        ));
        assert!(matches!(
            Storage::new(u64::MAX, 2, 8),
            Err(StorageError::TooLarge { .. })
        ));
        assert!(matches!(
            Storage::new(1 << 62, 1, 1),
            Err(StorageError::TooLarge { .. })
        ));
    }

    #[test]
    fn kernel_refusal_is_an_error_not_a_crash() {
        // 2^60 bytes fits in isize but exceeds every x86-64 and aarch64 user address space.
        let err = Storage::new(1 << 48, 1 << 12, 8).unwrap_err();
        assert!(
            matches!(err, StorageError::Map { bytes, .. } if bytes == 1 << 60),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_index_names_it_and_moves_nothing() {
        let s = Storage::new(10, 8, 8).unwrap();
        let mut d = vec![7u8; 16];
        let mut m = vec![7u8; 16];
        let err = s.checkout(&[3, 10], &mut d, &mut m).unwrap_err();
        assert!(matches!(
            err,
            StorageError::IndexOutOfRange {
                index: 10,
                position: 1,
                count: 10
            }
        ));
        assert!(d.iter().chain(&m).all(|&b| b == 7));
        let err = s.checkin(&[u64::MAX], &[1; 8], &[1; 8]).unwrap_err();
        assert!(matches!(err, StorageError::IndexOutOfRange { .. }));
    }

    #[test]
    fn duplicate_checkin_indices_are_rejected() {
        let s = Storage::new(100, 8, 8).unwrap();
        let err = s.checkin(&[1, 2, 1], &[0; 24], &[0; 24]).unwrap_err();
        assert!(matches!(
            err,
            StorageError::DuplicateIndex {
                index: 1,
                first: 0,
                second: 2
            }
        ));
        let mut long: Vec<u64> = (0..60).collect();
        long.push(42);
        let err = s.checkin(&long, &[0; 61 * 8], &[0; 61 * 8]).unwrap_err();
        assert!(matches!(
            err,
            StorageError::DuplicateIndex {
                index: 42,
                first: 42,
                second: 60
            }
        ));
        // Nothing was written by the rejected calls.
        let mut m = [9u8; 8];
        s.checkout(&[1], &mut [0; 8], &mut m).unwrap();
        assert_eq!(m, [0; 8]);
    }

    #[test]
    fn wrong_buffer_lengths_are_rejected() {
        let s = Storage::new(10, 16, 8).unwrap();
        let err = s.checkout(&[1, 2], &mut [0; 31], &mut [0; 16]).unwrap_err();
        assert!(matches!(
            err,
            StorageError::BufferLength {
                which: "data",
                expected: 32,
                actual: 31,
                ..
            }
        ));
        let err = s.checkin(&[1], &[0; 16], &[0; 9]).unwrap_err();
        assert!(matches!(
            err,
            StorageError::BufferLength { which: "meta", .. }
        ));
    }

    #[test]
    fn released_storage_refuses_everything() {
        let s = Storage::new(10, 8, 8).unwrap();
        let before = allocated_bytes();
        assert!(s.release());
        assert!(!s.release());
        assert!(s.is_released());
        assert!(allocated_bytes() <= before);
        assert!(matches!(
            s.checkout(&[0], &mut [0; 8], &mut [0; 8]),
            Err(StorageError::Released)
        ));
        assert!(matches!(
            s.checkin(&[0], &[0; 8], &[0; 8]),
            Err(StorageError::Released)
        ));
        assert!(matches!(s.resident_bytes(), Err(StorageError::Released)));
    }

    #[test]
    fn empty_batches_are_fine() {
        let s = Storage::new(10, 8, 8).unwrap();
        s.checkout(&[], &mut [], &mut []).unwrap();
        s.checkin(&[], &[], &[]).unwrap();
    }

    #[test]
    fn concurrent_checkouts_and_checkins_see_whole_items() {
        let s = std::sync::Arc::new(Storage::new(64, 256, 8).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for round in 0..500u32 {
                        let i = (round * 7 + t as u32) as u64 % 64;
                        if t % 2 == 0 {
                            let v = (round % 251) as u8;
                            s.checkin(&[i], &[v; 256], &[v; 8]).unwrap();
                        } else {
                            let mut d = [0u8; 256];
                            let mut m = [0u8; 8];
                            s.checkout(&[i], &mut d, &mut m).unwrap();
                            // Checkins are whole: an item never mixes two writes.
                            assert!(d.iter().all(|&b| b == d[0]));
                            assert!(m.iter().all(|&b| b == m[0]));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Checkin(Vec<u64>, u8),
        Checkout(Vec<u64>),
    }

    fn op(count: u64) -> impl Strategy<Value = Op> {
        // Indices up to count + 2 so that out-of-range ones are exercised too.
        let idx = prop::collection::vec(0..count + 2, 0..12);
        prop_oneof![
            (idx.clone(), any::<u8>()).prop_map(|(i, s)| Op::Checkin(i, s)),
            idx.prop_map(Op::Checkout),
        ]
    }

    /// A file in the temporary directory, removed when the test ends.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "oramstore-storage-{name}-{}-{}.oram",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_file_storage_keeps_the_contract_and_its_items() {
        let file = TempFile::new("contract");
        let s = Storage::create_file(&file.0, 100, 24, 8).unwrap();
        assert_eq!(s.path(), Some(file.0.as_path()));
        assert_eq!(s.resident_bytes().unwrap(), 0);
        let mut m = [0xFFu8; 16];
        s.checkout(&[3, 99], &mut [0; 48], &mut m).unwrap();
        assert_eq!(m, [0; 16]);
        let idx = [5u64, 99, 0];
        let data: Vec<u8> = idx.iter().flat_map(|&i| item(i, 24, 1)).collect();
        let meta: Vec<u8> = idx.iter().flat_map(|&i| item(i, 8, 2)).collect();
        s.checkin(&idx, &data, &meta).unwrap();
        assert!(matches!(
            s.checkin(&[1, 1], &[0; 48], &[0; 16]),
            Err(StorageError::DuplicateIndex { .. })
        ));
        assert!(matches!(
            s.checkout(&[100], &mut [0; 24], &mut [0; 8]),
            Err(StorageError::IndexOutOfRange { .. })
        ));
        s.flush().unwrap();
        assert!(s.release());
        assert!(matches!(s.flush(), Err(StorageError::Released)));
        assert_eq!(s.path(), Some(file.0.as_path()));

        let s = Storage::open_file(&file.0, Some(100), None, Some(8)).unwrap();
        assert_eq!(*s.layout(), Layout::new(100, 24, 8).unwrap());
        let mut d = vec![0u8; 3 * 24];
        let mut m = vec![0u8; 3 * 8];
        s.checkout(&idx, &mut d, &mut m).unwrap();
        assert_eq!((d, m), (data, meta));
    }

    #[test]
    fn opening_a_file_with_other_sizes_names_the_mismatch() {
        let file = TempFile::new("mismatch");
        drop(Storage::create_file(&file.0, 100, 24, 8).unwrap());
        for (sizes, which) in [
            ((Some(99), None, None), "count"),
            ((None, Some(25), None), "data_size"),
            ((Some(100), Some(24), Some(16)), "meta_size"),
        ] {
            let err = Storage::open_file(&file.0, sizes.0, sizes.1, sizes.2).unwrap_err();
            assert!(
                matches!(crate::file::file_error(&err), Some(FileError::Mismatch { which: w, .. }) if *w == which),
                "{err}"
            );
        }
        assert!(matches!(
            Storage::create_file(&file.0, 0, 24, 8),
            Err(StorageError::ZeroCount)
        ));
    }

    fn model_run(s: &Storage, ops: Vec<Op>) -> Result<(), TestCaseError> {
        const D: usize = 12;
        const M: usize = 4;
        assert_eq!(*s.layout(), Layout::new(20, D as u64, M as u64).unwrap());
        let mut model_meta = [0u8; 20 * M];
        let mut model_data: Vec<Option<Vec<u8>>> = vec![None; 20];
        for op in ops {
            match op {
                Op::Checkin(idx, salt) => {
                    let data: Vec<u8> = idx.iter().flat_map(|&i| item(i, D, salt)).collect();
                    let meta: Vec<u8> = idx.iter().flat_map(|&i| item(i, M, !salt)).collect();
                    let valid = idx.iter().all(|&i| i < 20) && check_distinct(&idx).is_ok();
                    let res = s.checkin(&idx, &data, &meta);
                    prop_assert_eq!(res.is_ok(), valid);
                    if valid {
                        for (k, &i) in idx.iter().enumerate() {
                            let i = i as usize;
                            model_data[i] = Some(data[k * D..(k + 1) * D].to_vec());
                            model_meta[i * M..(i + 1) * M]
                                .copy_from_slice(&meta[k * M..(k + 1) * M]);
                        }
                    }
                }
                Op::Checkout(idx) => {
                    let mut d = vec![0u8; idx.len() * D];
                    let mut m = vec![0u8; idx.len() * M];
                    let res = s.checkout(&idx, &mut d, &mut m);
                    prop_assert_eq!(res.is_ok(), idx.iter().all(|&i| i < 20));
                    if res.is_ok() {
                        for (k, &i) in idx.iter().enumerate() {
                            let i = i as usize;
                            prop_assert_eq!(
                                &m[k * M..(k + 1) * M],
                                &model_meta[i * M..(i + 1) * M]
                            );
                            if let Some(want) = &model_data[i] {
                                prop_assert_eq!(&d[k * D..(k + 1) * D], &want[..]);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_a_plain_model(ops in prop::collection::vec(op(20), 1..60)) {
            model_run(&Storage::new(20, 12, 4).unwrap(), ops)?;
        }

        #[test]
        fn a_file_storage_matches_a_plain_model(ops in prop::collection::vec(op(20), 1..60)) {
            let file = TempFile::new("model");
            model_run(&Storage::create_file(&file.0, 20, 12, 4).unwrap(), ops)?;
        }
    }
}
