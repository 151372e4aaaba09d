//! Storages kept in a file: durable, and larger than memory.
//!
//! A file storage holds the same items as an in-memory one, in a file the host keeps. Creating
//! one writes a small header and sets the file's length, so the file is sparse: disk space is
//! taken only as items are written, and a never-written item reads from a hole, which reads
//! zero. The process keeps no copy of the items; they pass through the kernel's page cache.
//!
//! # File layout
//!
//! All integers are little-endian. Offsets are in bytes from the start of the file.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic, `b"ORAMSTOR"` |
//! | 8 | 4 | format version, 1 |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `count` |
//! | 24 | 8 | `data_size` |
//! | 32 | 8 | `meta_size` |
//! | 40 | 8 | data offset, 4096 |
//! | 48 | 8 | metadata offset: data offset + `count * data_size`, rounded up to 4096 |
//! | 56 | 8 | file length: metadata offset + `count * meta_size` |
//! | 64 | 4032 | reserved, zero |
//!
//! Item `i`'s data lies at `data offset + i * data_size` and its metadata at
//! `metadata offset + i * meta_size`. The offsets and the length follow from the sizes; they are
//! stored so that other readers need not recompute them, and a header whose offsets disagree
//! with its sizes is refused. Version 1 readers refuse any other version and any nonzero
//! reserved byte.
//!
//! # The host controls the file
//!
//! The host may rewrite, truncate or extend the file at any time; the trusted side above
//! authenticates what it reads. Here that means: reads past the end of the file read zeros,
//! writes go exactly to the item's bytes (extending a truncated file if they must), a header
//! that is not a valid one is an error, and nothing the file holds can make this code misbehave.
//! The items move with positioned reads and writes (`pread`, `pwrite`), never through a shared
//! mapping, whose pages would raise `SIGBUS` and kill the process if the host truncated the file.
//!
//! # Queue depth
//!
//! A checkout reads every run of the batch (a stretch of consecutive items) that the page cache
//! holds with a read that refuses to wait for the disk (`RWF_NOWAIT`). For each run the cache
//! does not hold, it asks the kernel at once to read it (`POSIX_FADV_WILLNEED`, which queues the
//! disk reads and returns), and goes on with the batch. Then it reads the missing runs one after
//! the other: the disk has all of them queued by then, so a cold batch waits about as long as
//! its slowest read, and a warm one costs one system call per run. All of it happens on the
//! calling thread. (A pool of threads that each wait on one read was measured too, and was
//! slower: every read then waits for a thread to wake up.)

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::storage::{runs, Layout, StorageError, PARALLEL_BYTES};

/// The first eight bytes of every storage file.
pub const MAGIC: &[u8; 8] = b"ORAMSTOR";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the header; the data segment starts right after it.
pub const HEADER_BYTES: u64 = 4096;
/// The metadata segment starts at a multiple of this, so that it never shares a page with
/// the data segment.
pub const SEGMENT_ALIGN: u64 = 4096;

/// What went wrong with a storage file.
///
/// These travel inside [`StorageError::Io`] (as the payload of an [`io::Error`]), so that code
/// matching on [`StorageError`] sees every file error as an I/O error; [`file_error`] gets them
/// back out.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The operating system refused an operation on the file.
    #[error("could not {op} storage file {}: {source}", path.display())]
    Os {
        /// What was being done: `create`, `open`, `read`, `write`, `flush`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file is not an oramstore storage file of a version this build reads.
    #[error("{} is not a valid oramstore storage file: {reason}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The header's sizes are not the ones the caller asked for.
    #[error(
        "storage file {} holds {which}={found}, but {which}={given} was given",
        path.display()
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// `count`, `data_size` or `meta_size`.
        which: &'static str,
        /// The header's value.
        found: u64,
        /// The caller's value.
        given: u64,
    },
}

impl From<FileError> for StorageError {
    fn from(err: FileError) -> StorageError {
        let kind = match &err {
            FileError::Os { source, .. } => source.kind(),
            FileError::BadHeader { .. } | FileError::Mismatch { .. } => io::ErrorKind::InvalidData,
        };
        StorageError::Io(io::Error::new(kind, err))
    }
}

/// The [`FileError`] that `err` carries, if it carries one.
pub fn file_error(err: &StorageError) -> Option<&FileError> {
    match err {
        StorageError::Io(io) => io.get_ref()?.downcast_ref::<FileError>(),
        _ => None,
    }
}

/// A storage file's header: the storage's shape and where its parts lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The storage's shape.
    pub layout: Layout,
    /// Where item 0's data starts.
    pub data_offset: u64,
    /// Where item 0's metadata starts.
    pub meta_offset: u64,
    /// The length the file is created with: the end of the last item's metadata.
    pub file_len: u64,
}

impl Header {
    /// The header of a storage of shape `layout`, or `TooLarge` if its file would be longer
    /// than a file offset can say.
    pub fn new(layout: Layout) -> Result<Header, StorageError> {
        let too_large = || StorageError::TooLarge {
            count: layout.count,
            size: (layout.data_size + layout.meta_size) as u64,
        };
        let data_offset = HEADER_BYTES;
        let meta_offset = (layout.data_bytes() as u64)
            .checked_add(data_offset)
            .and_then(|end| end.checked_next_multiple_of(SEGMENT_ALIGN))
            .ok_or_else(too_large)?;
        let file_len = meta_offset
            .checked_add(layout.meta_bytes() as u64)
            .filter(|&len| len <= i64::MAX as u64)
            .ok_or_else(too_large)?;
        Ok(Header {
            layout,
            data_offset,
            meta_offset,
            file_len,
        })
    }

    /// The header's bytes, as the file holds them.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_BYTES as usize];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let l = &self.layout;
        let fields = [
            l.count,
            l.data_size as u64,
            l.meta_size as u64,
            self.data_offset,
            self.meta_offset,
            self.file_len,
        ];
        for (k, value) in fields.into_iter().enumerate() {
            bytes[16 + 8 * k..24 + 8 * k].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// Reads a header from the first bytes of a file (all of them if the file is shorter than
    /// a header). The error says what is wrong, for a [`FileError::BadHeader`].
    pub fn decode(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() < HEADER_BYTES as usize {
            return Err(format!(
                "the file holds {} bytes, fewer than the {HEADER_BYTES}-byte header",
                bytes.len()
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err(format!(
                "its magic is {:?}, not {:?}",
                bytes[..8].escape_ascii().to_string(),
                MAGIC.escape_ascii().to_string()
            ));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let field =
            |k: usize| u64::from_le_bytes(bytes[16 + 8 * k..24 + 8 * k].try_into().unwrap());
        let version = word(8);
        if version != VERSION {
            return Err(format!(
                "its format version is {version}, this build reads version {VERSION}"
            ));
        }
        if word(12) != 0 || bytes[64..HEADER_BYTES as usize].iter().any(|&b| b != 0) {
            return Err("its reserved bytes are not zero".into());
        }
        let layout = Layout::new(field(0), field(1), field(2)).map_err(|err| err.to_string())?;
        let header = Header::new(layout).map_err(|err| err.to_string())?;
        let stored = (field(3), field(4), field(5));
        if stored != (header.data_offset, header.meta_offset, header.file_len) {
            return Err(format!(
                "its offsets and length {stored:?} do not match its sizes, which give {:?}",
                (header.data_offset, header.meta_offset, header.file_len)
            ));
        }
        Ok(header)
    }
}

/// A storage's items in a file, moved with positioned reads and writes.
///
/// The storage above checks every argument before it moves a byte, so the methods that move
/// items trust theirs: an index past `count` would only reach other bytes of the file (or
/// panic on overflow), never memory, and they are not public for that reason.
pub struct FileStore {
    file: File,
    path: PathBuf,
    header: Header,
    /// Cleared once the kernel refuses reads that do not wait on this file, so that later
    /// batches skip the attempt and queue every run's disk reads at once.
    nowait: AtomicBool,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

/// A part of the batch that moves with one read or write: `buf` at `offset` of the file.
type Transfer<B> = (u64, B);

impl FileStore {
    /// Creates the file at `path`, which must not exist, for a storage of shape `layout`.
    ///
    /// Writes the header and sets the file's length, and nothing else; the file and its
    /// directory entry are synced, so a crash afterwards leaves a valid, empty storage. If any
    /// step fails, the file is removed again.
    pub fn create(path: &Path, layout: Layout) -> Result<FileStore, StorageError> {
        let header = Header::new(layout)?;
        let os = |source| FileError::Os {
            op: "create",
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(os)?;
        let setup = || -> io::Result<()> {
            file.write_all_at(&header.encode(), 0)?;
            file.set_len(header.file_len)?;
            file.sync_all()?;
            sync_parent(path)
        };
        if let Err(source) = setup() {
            // The file is ours (it did not exist a moment ago) and of no use half made.
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(os(source).into());
        }
        advise_random(&file);
        Ok(FileStore::wrap(file, path, header))
    }

    /// Opens the storage file at `path`, whose header says the storage's shape.
    pub fn open(path: &Path) -> Result<FileStore, StorageError> {
        let os = |source| FileError::Os {
            op: "open",
            path: path.to_owned(),
            source,
        };
        let bad = |reason: String| FileError::BadHeader {
            path: path.to_owned(),
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(os)?;
        // A FIFO or a device would block or answer anything; only a regular file will do.
        if !file.metadata().map_err(os)?.is_file() {
            return Err(bad("it is not a regular file".into()).into());
        }
        let mut bytes = vec![0u8; HEADER_BYTES as usize];
        let got = read_some(&file, 0, &mut bytes).map_err(os)?;
        let header = Header::decode(&bytes[..got]).map_err(bad)?;
        advise_random(&file);
        Ok(FileStore::wrap(file, path, header))
    }

    fn wrap(file: File, path: &Path, header: Header) -> FileStore {
        FileStore {
            file,
            path: path.to_owned(),
            header,
            nowait: AtomicBool::new(cfg!(target_os = "linux")),
        }
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's path, as it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn os_error(&self, op: &'static str, source: io::Error) -> StorageError {
        FileError::Os {
            op,
            path: self.path.clone(),
            source,
        }
        .into()
    }

    /// Splits `buf` into one transfer per run of consecutive indices, of the segment whose
    /// item 0 starts at `base`.
    fn transfers<'a, B: SplitAt<'a>>(
        base: u64,
        size: usize,
        indices: &[u64],
        mut buf: B,
        out: &mut Vec<Transfer<B>>,
    ) {
        for run in runs(indices) {
            let (head, rest) = buf.split(run.len * size);
            out.push((base + run.first * size as u64, head));
            buf = rest;
        }
    }

    /// Reads the items at `indices` into `data_out` and `meta_out`, as
    /// [`crate::storage::Storage::checkout`] does. Bytes past the end of the file read zero.
    pub(crate) fn checkout(
        &self,
        indices: &[u64],
        data_out: &mut [u8],
        meta_out: &mut [u8],
    ) -> Result<(), StorageError> {
        let l = &self.header.layout;
        let bytes = data_out.len() + meta_out.len();
        let mut reads = Vec::new();
        Self::transfers(
            self.header.data_offset,
            l.data_size,
            indices,
            data_out,
            &mut reads,
        );
        Self::transfers(
            self.header.meta_offset,
            l.meta_size,
            indices,
            meta_out,
            &mut reads,
        );
        let threads = rayon::current_num_threads();
        let misses: Vec<Transfer<&mut [u8]>> = if !self.nowait.load(Ordering::Relaxed) {
            for (offset, buf) in &reads {
                will_need(&self.file, *offset, buf.len());
            }
            reads
        } else if bytes >= PARALLEL_BYTES && threads >= 2 && reads.len() >= 2 {
            // Copying a large warm batch out of the page cache is worth a second core.
            let per = reads.len().div_ceil(threads);
            reads
                .into_par_iter()
                .with_min_len(per)
                .filter_map(|(offset, buf)| self.read_cached(offset, buf).transpose())
                .collect::<io::Result<_>>()
                .map_err(|err| self.os_error("read", err))?
        } else {
            reads
                .into_iter()
                .filter_map(|(offset, buf)| self.read_cached(offset, buf).transpose())
                .collect::<io::Result<_>>()
                .map_err(|err| self.os_error("read", err))?
        };
        // Every missing run is queued at the disk; each read waits for its own.
        misses
            .into_iter()
            .try_for_each(|(offset, buf)| read_full(&self.file, offset, buf))
            .map_err(|err| self.os_error("read", err))
    }

    /// Reads what the page cache holds of `buf`, without waiting for the disk. Returns the
    /// part still to be read, if any, for which the disk reads have been queued.
    #[cfg(target_os = "linux")]
    fn read_cached<'a>(
        &self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> io::Result<Option<Transfer<&'a mut [u8]>>> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let iov = libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            };
            // SAFETY: `iov` describes `rest`, which is valid for writes of its length and
            // borrowed mutably for the whole call. The offset is below the header's file
            // length plus one item, which fits in an `off_t` (checked by `Header::new`).
            let got = unsafe {
                libc::preadv2(
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    &iov,
                    1,
                    (offset + done as u64) as libc::off_t,
                    libc::RWF_NOWAIT,
                )
            };
            match got {
                0 => {
                    // The end of the file: the host truncated it, and the rest reads zero.
                    rest.fill(0);
                    return Ok(None);
                }
                1.. => done += got as usize,
                _ => {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        // Not cached: left to the read that waits.
                        Some(libc::EAGAIN) => {}
                        // The file system cannot read without waiting. Any other error is left
                        // to the waiting read too, which reports it if it is real.
                        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
                            self.nowait.store(false, Ordering::Relaxed)
                        }
                        _ => {}
                    }
                    break;
                }
            }
        }
        if done == buf.len() {
            return Ok(None);
        }
        let rest = &mut buf[done..];
        will_need(&self.file, offset + done as u64, rest.len());
        Ok(Some((offset + done as u64, rest)))
    }

    #[cfg(not(target_os = "linux"))]
    fn read_cached<'a>(
        &self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> io::Result<Option<Transfer<&'a mut [u8]>>> {
        Ok(Some((offset, buf)))
    }

    /// Writes the items at `indices` from `data_in` and `meta_in`, as
    /// [`crate::storage::Storage::checkin`] does.
    ///
    /// The writes go one after the other on the calling thread: buffered writes to one file
    /// hold the file's lock in Linux file systems, so more threads would only queue on it. An
    /// I/O error may leave part of the batch written.
    pub(crate) fn checkin(
        &self,
        indices: &[u64],
        data_in: &[u8],
        meta_in: &[u8],
    ) -> Result<(), StorageError> {
        let l = &self.header.layout;
        let mut writes = Vec::new();
        Self::transfers(
            self.header.data_offset,
            l.data_size,
            indices,
            data_in,
            &mut writes,
        );
        Self::transfers(
            self.header.meta_offset,
            l.meta_size,
            indices,
            meta_in,
            &mut writes,
        );
        writes
            .into_iter()
            .try_for_each(|(offset, buf)| self.file.write_all_at(buf, offset))
            .map_err(|err| self.os_error("write", err))
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|err| self.os_error("flush", err))
    }
}

/// A buffer that splits into a head of `n` bytes and the rest, each as long-lived as itself.
trait SplitAt<'a>: Sized {
    fn split(self, n: usize) -> (Self, Self);
}

impl<'a> SplitAt<'a> for &'a mut [u8] {
    fn split(self, n: usize) -> (Self, Self) {
        self.split_at_mut(n)
    }
}

impl<'a> SplitAt<'a> for &'a [u8] {
    fn split(self, n: usize) -> (Self, Self) {
        self.split_at(n)
    }
}

/// Fills `buf` from `offset`, waiting for the disk; bytes past the end of the file read zero.
fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let done = read_some(file, offset, buf)?;
    buf[done..].fill(0);
    Ok(())
}

/// Reads from `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_some(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(got) => done += got,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}

/// Asks the kernel to read `len` bytes at `offset` into the page cache, without waiting for
/// them: the disk reads are queued and the call returns. A hint: if it fails or the pages are
/// dropped again before they are read, the read that follows goes to the disk itself.
fn will_need(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: posix_fadvise only reads its arguments; a bad descriptor or range is an error
        // code, ignored because this is a hint. The offset and length fit in an `off_t`
        // (`Header::new` bounds the file length, and `len` is part of a caller's buffer).
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(file),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Tells the kernel that reads will be random, so that it reads no more than is asked: the
/// default read-ahead would fill the page cache with neighbours no one wants.
fn advise_random(file: &File) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: posix_fadvise only reads its arguments; a bad descriptor is an error code.
        // Advice is a hint: a failure changes nothing but speed.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(file),
                0,
                0,
                libc::POSIX_FADV_RANDOM,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Syncs the directory that holds `path`, so that a new file's name survives a crash.
fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match File::open(dir)?.sync_all() {
        // Some file systems cannot sync a directory; there is nothing more to do there.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed when the test ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "oramstore-file-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn layout(count: u64, data: u64, meta: u64) -> Layout {
        Layout::new(count, data, meta).unwrap()
    }

    fn item(index: u64, size: usize, salt: u8) -> Vec<u8> {
        (0..size)
            .map(|b| (index as u8).wrapping_mul(29) ^ (b as u8).wrapping_mul(7) ^ salt)
            .collect()
    }

    fn put(store: &FileStore, idx: &[u64], salt: u8) {
        let l = store.header().layout;
        let data: Vec<u8> = idx
            .iter()
            .flat_map(|&i| item(i, l.data_size, salt))
            .collect();
        let meta: Vec<u8> = idx
            .iter()
            .flat_map(|&i| item(i, l.meta_size, !salt))
            .collect();
        store.checkin(idx, &data, &meta).unwrap();
    }

    fn get(store: &FileStore, idx: &[u64]) -> (Vec<u8>, Vec<u8>) {
        let l = store.header().layout;
        let mut data = vec![0xEE; idx.len() * l.data_size];
        let mut meta = vec![0xEE; idx.len() * l.meta_size];
        store.checkout(idx, &mut data, &mut meta).unwrap();
        (data, meta)
    }

    fn expect(store: &FileStore, idx: &[u64], salt: u8) {
        let l = store.header().layout;
        let (data, meta) = get(store, idx);
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(
                data[k * l.data_size..][..l.data_size],
                item(i, l.data_size, salt)
            );
            assert_eq!(
                meta[k * l.meta_size..][..l.meta_size],
                item(i, l.meta_size, !salt)
            );
        }
    }

    #[test]
    fn header_offsets_follow_the_sizes() {
        let h = Header::new(layout(3, 100, 8)).unwrap();
        assert_eq!(
            (h.data_offset, h.meta_offset, h.file_len),
            (4096, 8192, 8192 + 24)
        );
        let h = Header::new(layout(4, 1024, 8)).unwrap();
        assert_eq!((h.meta_offset, h.file_len), (8192, 8192 + 32));
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let bytes = h.encode();
        assert_eq!(&bytes[..8], b"ORAMSTOR");
        assert_eq!(bytes.len(), 4096);
    }

    #[test]
    fn a_file_longer_than_an_offset_can_say_is_too_large() {
        // Both segments fit in memory's address space; with the header, the file would not.
        let l = layout(1, (1 << 63) - 16, 8);
        assert!(matches!(Header::new(l), Err(StorageError::TooLarge { .. })));
    }

    #[test]
    fn create_writes_a_sparse_file_of_the_full_length() {
        let dir = TempDir::new("create");
        let path = dir.path("s.oram");
        let store = FileStore::create(&path, layout(1 << 20, 4096, 64)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), store.header().file_len);
        assert!(meta.len() > 4 << 30);
        // Only the header's block is allocated.
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 <= 64 << 10);
        let err = FileStore::create(&path, layout(1, 8, 8)).unwrap_err();
        let io = match &err {
            StorageError::Io(io) => io,
            other => panic!("{other}"),
        };
        assert_eq!(io.kind(), io::ErrorKind::AlreadyExists);
        assert!(matches!(
            file_error(&err),
            Some(FileError::Os { op: "create", source, .. }) if source.raw_os_error() == Some(libc::EEXIST)
        ));
    }

    #[test]
    fn holes_read_zero_and_writes_round_trip_across_reopen() {
        let dir = TempDir::new("reopen");
        let path = dir.path("s.oram");
        let idx = [7u64, 8, 9, 0, 999, 500];
        {
            let store = FileStore::create(&path, layout(1000, 100, 12)).unwrap();
            let (data, meta) = get(&store, &[3, 4, 999]);
            assert!(data.iter().chain(&meta).all(|&b| b == 0));
            put(&store, &idx, 1);
            store.flush().unwrap();
        }
        let store = FileStore::open(&path).unwrap();
        assert_eq!(store.header().layout, layout(1000, 100, 12));
        expect(&store, &idx, 1);
        expect(&store, &[999, 7, 7, 8], 1);
        let (data, meta) = get(&store, &[1, 10, 998]);
        assert!(data.iter().chain(&meta).all(|&b| b == 0));
    }

    #[test]
    fn a_truncated_file_reads_zero_and_writes_grow_it_back() {
        let dir = TempDir::new("truncate");
        let path = dir.path("s.oram");
        let store = FileStore::create(&path, layout(64, 4096, 16)).unwrap();
        let all: Vec<u64> = (0..64).collect();
        put(&store, &all, 3);
        // The host cuts the file in the middle of item 10's data.
        let cut = store.header().data_offset + 10 * 4096 + 100;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (data, meta) = get(&store, &all);
        assert_eq!(
            data[..10 * 4096 + 100],
            all[..11]
                .iter()
                .flat_map(|&i| item(i, 4096, 3))
                .collect::<Vec<_>>()[..10 * 4096 + 100]
        );
        assert!(data[10 * 4096 + 100..].iter().all(|&b| b == 0));
        assert!(meta.iter().all(|&b| b == 0));
        // Cut inside the header: every item reads zero, and a write lands at its own offset.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let (data, meta) = get(&store, &[0, 63]);
        assert!(data.iter().chain(&meta).all(|&b| b == 0));
        put(&store, &[63], 4);
        expect(&store, &[63], 4);
        // The write went exactly to item 63's metadata, the last bytes of the file.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            store.header().file_len
        );
    }

    #[test]
    fn writes_stay_inside_their_item() {
        let dir = TempDir::new("bounds");
        let path = dir.path("s.oram");
        let store = FileStore::create(&path, layout(10, 24, 8)).unwrap();
        put(&store, &[4], 9);
        let bytes = std::fs::read(&path).unwrap();
        let h = store.header();
        let data_at = (h.data_offset + 4 * 24) as usize;
        let meta_at = (h.meta_offset + 4 * 8) as usize;
        for (at, byte) in bytes.iter().enumerate().skip(HEADER_BYTES as usize) {
            let inside =
                (data_at..data_at + 24).contains(&at) || (meta_at..meta_at + 8).contains(&at);
            if !inside {
                assert_eq!(*byte, 0, "byte {at} was written");
            }
        }
        assert_eq!(bytes[data_at..data_at + 24], item(4, 24, 9));
    }

    #[test]
    fn cold_batches_round_trip() {
        let dir = TempDir::new("cold");
        let path = dir.path("s.oram");
        let store = FileStore::create(&path, layout(4096, 4096, 64)).unwrap();
        let idx: Vec<u64> = (0..4096)
            .map(|i| (i * 2654435761) % 4096)
            .step_by(5)
            .collect();
        put(&store, &idx, 5);
        store.flush().unwrap();
        // SAFETY: posix_fadvise only reads its arguments.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&store.file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
        expect(&store, &idx, 5);
        expect(&store, &idx[..17], 5);
    }

    fn bad_header(bytes: &[u8]) -> String {
        let dir = TempDir::new("header");
        let path = dir.path("s.oram");
        std::fs::write(&path, bytes).unwrap();
        let err = FileStore::open(&path).unwrap_err();
        match file_error(&err) {
            Some(FileError::BadHeader { reason, .. }) => reason.clone(),
            _ => panic!("{err}"),
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = Header::new(layout(100, 64, 16)).unwrap().encode();
        let with = |at: usize, value: &[u8]| {
            let mut b = good.clone();
            b[at..at + value.len()].copy_from_slice(value);
            b
        };
        assert!(bad_header(&[]).contains("fewer than the 4096-byte header"));
        assert!(bad_header(&good[..4095]).contains("holds 4095 bytes"));
        assert!(bad_header(&with(0, b"ORAMSTOX")).contains("magic"));
        assert!(bad_header(&with(8, &2u32.to_le_bytes())).contains("version is 2"));
        assert!(bad_header(&with(12, &[1])).contains("reserved"));
        assert!(bad_header(&with(4000, &[1])).contains("reserved"));
        assert!(bad_header(&with(16, &0u64.to_le_bytes())).contains("count must be positive"));
        assert!(bad_header(&with(24, &0u64.to_le_bytes())).contains("data_size must be positive"));
        assert!(bad_header(&with(16, &u64::MAX.to_le_bytes())).contains("overflow"));
        assert!(bad_header(&with(24, &(1u64 << 62).to_le_bytes())).contains("overflow"));
        assert!(bad_header(&with(48, &0u64.to_le_bytes())).contains("do not match"));
        assert!(bad_header(&with(56, &1u64.to_le_bytes())).contains("do not match"));
        // A good header alone opens: the items are all beyond the end and read zero.
        let dir = TempDir::new("short");
        let path = dir.path("s.oram");
        std::fs::write(&path, &good).unwrap();
        let store = FileStore::open(&path).unwrap();
        let (data, meta) = get(&store, &[99]);
        assert!(data.iter().chain(&meta).all(|&b| b == 0));
    }

    #[test]
    fn missing_files_and_directories_are_os_errors() {
        let dir = TempDir::new("missing");
        let err = FileStore::open(&dir.path("nothing")).unwrap_err();
        assert!(matches!(
            file_error(&err),
            Some(FileError::Os { op: "open", source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));
        let err = FileStore::open(&dir.0).unwrap_err();
        assert!(
            matches!(file_error(&err), Some(FileError::Os { .. })),
            "{err}"
        );
        let err = FileStore::create(&dir.path("no/such/dir"), layout(1, 8, 8)).unwrap_err();
        assert!(matches!(
            file_error(&err),
            Some(FileError::Os { op: "create", .. })
        ));
    }
}
