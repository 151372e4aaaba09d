//! The untrusted side of the enclave's ORAM storage interface, as `extern "C"` functions.
//!
//! The signatures are those of the OCALLs in the enclave definition (EDL):
//!
//! ```c
//! void allocate_oram_storage(uint64_t count, uint64_t data_size, uint64_t meta_size, uint64_t *id);
//! void release_oram_storage(uint64_t id);
//! void checkout_oram_storage(uint64_t id, const uint64_t *idx, size_t idx_len,
//!                            uint64_t *databuf, size_t databuf_len,
//!                            uint64_t *metabuf, size_t metabuf_len);
//! void checkin_oram_storage(uint64_t id, const uint64_t *idx, size_t idx_len,
//!                           const uint64_t *databuf, size_t databuf_len,
//!                           const uint64_t *metabuf, size_t metabuf_len);
//! ```
//!
//! Sizes are in bytes and must be multiples of 8; buffer lengths are in `u64` words. An id is
//! a key into a handle table, never a pointer, so a wrong or released id is detected instead of
//! being dereferenced. Ids are never reused.
//!
//! A caller's pointers and lengths are checked before any slice is made of them: null with a
//! nonzero length, misaligned, longer than `isize::MAX` bytes, wrapping around the address
//! space, not matching the batch, or (for a checkout) overlapping each other. Each would make
//! the slice undefined behaviour, so it is reported instead. What cannot be checked is that a
//! pointer is valid for its length.
//!
//! The Python extension exports these functions, and so does the C library built by the
//! workspace member `capi/` (`make clib`), whose header `include/oramstore.h` cbindgen
//! generates from this file: the doc comments of the public items below are its comments.
//!
//! The EDL's functions return nothing, so a failure is reported the way `errno` is: the call
//! writes nothing to the caller's buffers, logs the error, and records it for the calling
//! thread, where [`oram_storage_last_error`] returns its code and
//! [`oram_storage_last_error_message`] its text. A successful call clears it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_char;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use crate::storage::{Storage, StorageError};

/// Bytes in a word, the unit of the buffers' lengths.
const WORD: usize = std::mem::size_of::<u64>();

/// Error codes recorded by the OCALL functions.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcallError {
    /// The last call succeeded.
    Ok = 0,
    /// The id is 0, was never issued, or was released.
    UnknownId = 1,
    /// A size is zero, not a multiple of 8, or too large.
    BadSize = 2,
    /// A buffer length does not match the batch or is more than `isize::MAX` (`PTRDIFF_MAX`)
    /// bytes, a pointer is null with a nonzero length or not aligned to 8 bytes, or a checkout's
    /// output buffers overlap each other or `idx`.
    BadBuffer = 3,
    /// An index is not below the storage's count.
    IndexOutOfRange = 4,
    /// An index appears twice in one checkin.
    DuplicateIndex = 5,
    /// The kernel refused the memory.
    OutOfMemory = 6,
    /// The output id pointer is null.
    NullId = 7,
}

struct LastError {
    code: OcallError,
    message: String,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = const {
        RefCell::new(LastError { code: OcallError::Ok, message: String::new() })
    };
}

fn record(result: Result<(), (OcallError, String)>) {
    let (code, message) = match result {
        Ok(()) => (OcallError::Ok, String::new()),
        Err((code, message)) => {
            log::error!(target: "oramstore", "oram storage ocall failed: {message}");
            (code, message)
        }
    };
    LAST_ERROR.with(|e| *e.borrow_mut() = LastError { code, message });
}

fn code_of(err: &StorageError) -> OcallError {
    match err {
        StorageError::ZeroCount | StorageError::ZeroSize { .. } | StorageError::TooLarge { .. } => {
            OcallError::BadSize
        }
        StorageError::IndexOutOfRange { .. } => OcallError::IndexOutOfRange,
        StorageError::DuplicateIndex { .. } => OcallError::DuplicateIndex,
        StorageError::BufferLength { .. }
        | StorageError::BufferOverlaps { .. }
        | StorageError::RegionTooSmall { .. } => OcallError::BadBuffer,
        StorageError::Released => OcallError::UnknownId,
        StorageError::Map { .. } | StorageError::Io(_) => OcallError::OutOfMemory,
    }
}

fn fail(err: StorageError) -> (OcallError, String) {
    (code_of(&err), err.to_string())
}

struct HandleTable {
    live: Mutex<HashMap<u64, Arc<Storage>>>,
    next: AtomicU64,
}

static TABLE: LazyLock<HandleTable> = LazyLock::new(|| HandleTable {
    live: Mutex::new(HashMap::new()),
    next: AtomicU64::new(1),
});

fn lookup(id: u64) -> Result<Arc<Storage>, (OcallError, String)> {
    TABLE.live.lock().get(&id).cloned().ok_or_else(|| {
        (
            OcallError::UnknownId,
            format!("no live oram storage has id {id}"),
        )
    })
}

/// Checks a caller's buffer of `len` `u64` words at `ptr` as far as that is possible without
/// touching it, and returns the bytes it claims (empty for `len` 0, whatever `ptr` is).
///
/// A slice may only be made of memory that is non-null, aligned, no larger than `isize::MAX`
/// bytes and does not wrap around the address space; making one that is not is undefined
/// behaviour even if it is never read. Each of these is checked here, before any slice exists,
/// so that a wrong length or pointer is reported instead.
fn word_range(
    ptr: *const u64,
    len: usize,
    what: &str,
) -> Result<Range<usize>, (OcallError, String)> {
    if len == 0 {
        return Ok(0..0);
    }
    let bad = |why: String| (OcallError::BadBuffer, format!("{what} {why}"));
    if ptr.is_null() {
        return Err(bad(format!("is null but its length is {len}")));
    }
    let bytes = len
        .checked_mul(WORD)
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or_else(|| {
            bad(format!(
                "length of {len} words is more than isize::MAX (PTRDIFF_MAX) bytes"
            ))
        })?;
    let start = ptr as usize;
    if start % std::mem::align_of::<u64>() != 0 {
        return Err(bad(format!("at {start:#x} is not aligned to 8 bytes")));
    }
    let end = start.checked_add(bytes).ok_or_else(|| {
        bad(format!(
            "at {start:#x} of {bytes} bytes wraps around the address space"
        ))
    })?;
    Ok(start..end)
}

/// Rejects a batch whose buffers do not have exactly the room its `idx_len` items need, before
/// any slice is made of them.
fn check_batch(
    storage: &Storage,
    idx_len: usize,
    data: &Range<usize>,
    meta: &Range<usize>,
) -> Result<(), (OcallError, String)> {
    storage
        .layout()
        .check_buffers(idx_len, data.len(), meta.len())
        .map_err(fail)
}

/// Rejects output buffers that share a byte with each other or with `idx`: Rust may assume
/// that memory it writes through one reference is reached through no other.
fn check_disjoint(buffers: [(&str, &Range<usize>); 3]) -> Result<(), (OcallError, String)> {
    for (i, (a_name, a)) in buffers.iter().enumerate() {
        for (b_name, b) in &buffers[i + 1..] {
            if !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end {
                return Err((
                    OcallError::BadBuffer,
                    format!(
                        "{a_name} ({:#x}+{}) and {b_name} ({:#x}+{}) overlap; the output buffers \
                         and idx must be disjoint",
                        a.start,
                        a.len(),
                        b.start,
                        b.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A slice of `len` words at `ptr`, or an empty one for `len` 0.
///
/// # Safety
///
/// `ptr` and `len` passed [`word_range`], and a non-empty range is valid for reads for `'a`.
unsafe fn slice_in<'a>(ptr: *const u64, len: usize) -> &'a [u64] {
    if len == 0 {
        return &[];
    }
    // SAFETY: non-null, aligned, at most isize::MAX bytes without wrapping (checked by
    // `word_range`), and readable (the caller's contract).
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Like [`slice_in`], for an output buffer.
///
/// # Safety
///
/// As for [`slice_in`], valid for writes, and disjoint from every other slice alive in `'a`.
unsafe fn slice_out<'a>(ptr: *mut u64, len: usize) -> &'a mut [u64] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: as in `slice_in`; writable and unaliased (the caller's contract and
    // `check_disjoint`).
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

fn words_as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements, and the byte length of a valid
    // `[u64]` cannot overflow.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), std::mem::size_of_val(words)) }
}

fn words_as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern is a valid u64, so writes through the view are fine.
    unsafe {
        std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), std::mem::size_of_val(words))
    }
}

/// Allocates a storage of `count` items of `data_size` + `meta_size` bytes (nonzero multiples of
/// 8) and writes its id to `*id`, or 0 if it cannot. Ids are never 0 and never reused.
///
/// # Safety
///
/// `id` must be null, which is reported, or valid for writing one `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn allocate_oram_storage(
    count: u64,
    data_size: u64,
    meta_size: u64,
    id: *mut u64,
) {
    let result = (|| {
        if id.is_null() {
            return Err((OcallError::NullId, "id output pointer is null".to_owned()));
        }
        // SAFETY: non-null, and the caller promises it is valid for a write. Writing unaligned
        // accepts any address, so a misaligned pointer from C is no undefined behaviour.
        unsafe { id.write_unaligned(0) };
        for (name, size) in [("data_size", data_size), ("meta_size", meta_size)] {
            if size % 8 != 0 {
                return Err((
                    OcallError::BadSize,
                    format!("{name} must be a multiple of 8, got {size}"),
                ));
            }
        }
        let storage = Storage::new(count, data_size, meta_size).map_err(fail)?;
        let new_id = TABLE.next.fetch_add(1, Ordering::Relaxed);
        TABLE.live.lock().insert(new_id, Arc::new(storage));
        // SAFETY: as above.
        unsafe { id.write_unaligned(new_id) };
        Ok(())
    })();
    record(result);
}

/// Releases the storage with this id; the id is invalid from then on. Copies in progress on
/// other threads finish first.
#[no_mangle]
pub extern "C" fn release_oram_storage(id: u64) {
    let removed = TABLE.live.lock().remove(&id);
    let result = match removed {
        Some(storage) => {
            storage.release();
            Ok(())
        }
        None => Err((
            OcallError::UnknownId,
            format!("cannot release oram storage {id}: no live storage has that id"),
        )),
    };
    record(result);
}

/// Copies the items at the `idx_len` indices `idx` into `databuf` and `metabuf`: item `k` of
/// the batch to word `k * data_size / 8` of `databuf` and `k * meta_size / 8` of `metabuf`. An
/// index may repeat. `databuf_len` must be `idx_len * data_size / 8` and `metabuf_len`
/// `idx_len * meta_size / 8`.
///
/// Lengths, null pointers, alignment and overlaps between `idx`, `databuf` and `metabuf` are
/// checked before anything is read or written.
///
/// # Safety
///
/// Each pointer with a nonzero length must be valid for that many `uint64_t` words: reads for
/// `idx`, writes for `databuf` and `metabuf`.
#[no_mangle]
pub unsafe extern "C" fn checkout_oram_storage(
    id: u64,
    idx: *const u64,
    idx_len: usize,
    databuf: *mut u64,
    databuf_len: usize,
    metabuf: *mut u64,
    metabuf_len: usize,
) {
    let result = (|| {
        let storage = lookup(id)?;
        let idx_bytes = word_range(idx, idx_len, "idx")?;
        let data_bytes = word_range(databuf, databuf_len, "databuf")?;
        let meta_bytes = word_range(metabuf, metabuf_len, "metabuf")?;
        check_batch(&storage, idx_len, &data_bytes, &meta_bytes)?;
        check_disjoint([
            ("idx", &idx_bytes),
            ("databuf", &data_bytes),
            ("metabuf", &meta_bytes),
        ])?;
        // SAFETY: every range passed `word_range` and the three are disjoint; the caller
        // promises that each is valid (reads for `idx`, writes for the buffers).
        let (idx, data, meta) = unsafe {
            (
                slice_in(idx, idx_len),
                slice_out(databuf, databuf_len),
                slice_out(metabuf, metabuf_len),
            )
        };
        storage
            .checkout(idx, words_as_bytes_mut(data), words_as_bytes_mut(meta))
            .map_err(fail)
    })();
    record(result);
}

/// Copies item `k` of `databuf` and `metabuf` (laid out as for `checkout_oram_storage`) to the
/// item at `idx[k]`, for the `idx_len` indices `idx`, which must be distinct. The inputs may
/// overlap each other.
///
/// # Safety
///
/// Each pointer with a nonzero length must be valid for reading that many `uint64_t` words.
#[no_mangle]
pub unsafe extern "C" fn checkin_oram_storage(
    id: u64,
    idx: *const u64,
    idx_len: usize,
    databuf: *const u64,
    databuf_len: usize,
    metabuf: *const u64,
    metabuf_len: usize,
) {
    let result = (|| {
        let storage = lookup(id)?;
        word_range(idx, idx_len, "idx")?;
        let data_bytes = word_range(databuf, databuf_len, "databuf")?;
        let meta_bytes = word_range(metabuf, metabuf_len, "metabuf")?;
        check_batch(&storage, idx_len, &data_bytes, &meta_bytes)?;
        // SAFETY: every range passed `word_range`, and the caller promises that each is valid
        // for reads. Shared slices may overlap.
        let (idx, data, meta) = unsafe {
            (
                slice_in(idx, idx_len),
                slice_in(databuf, databuf_len),
                slice_in(metabuf, metabuf_len),
            )
        };
        storage
            .checkin(idx, words_as_bytes(data), words_as_bytes(meta))
            .map_err(fail)
    })();
    record(result);
}

/// The error code (an `OramStorageError` in C) of the calling thread's last call of this
/// interface, 0 if it succeeded.
#[no_mangle]
pub extern "C" fn oram_storage_last_error() -> i32 {
    LAST_ERROR.with(|e| e.borrow().code as i32)
}

/// Copies the text of the calling thread's last failure (empty after a success) into `buf`,
/// truncated to `buf_len - 1` bytes and NUL-terminated, and returns the full text's length in
/// bytes, without the NUL. With a null `buf` or a `buf_len` of 0 it only returns the length.
///
/// # Safety
///
/// `buf` must be null or valid for writing `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn oram_storage_last_error_message(
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        let text = e.message.as_bytes();
        if !buf.is_null() && buf_len > 0 {
            let n = text.len().min(buf_len - 1);
            // SAFETY: `buf` has room for `buf_len > n` bytes, and `text` is a distinct allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        text.len()
    })
}

/// Ids of the storages allocated through this interface and not yet released.
pub fn live_ids() -> Vec<u64> {
    let mut ids: Vec<u64> = TABLE.live.lock().keys().copied().collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocate(count: u64, data: u64, meta: u64) -> u64 {
        let mut id = u64::MAX;
        // SAFETY: `id` is a valid u64.
        unsafe { allocate_oram_storage(count, data, meta, &mut id) };
        id
    }

    fn last() -> (i32, String) {
        let mut buf = [0 as c_char; 256];
        // SAFETY: `buf` has 256 writable bytes.
        let len = unsafe { oram_storage_last_error_message(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: the function NUL-terminated `buf`.
        let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(text.to_bytes().len(), len.min(255));
        (
            oram_storage_last_error(),
            text.to_string_lossy().into_owned(),
        )
    }

    fn checkout(id: u64, idx: &[u64], data: &mut [u64], meta: &mut [u64]) {
        // SAFETY: slices give valid pointers and lengths.
        unsafe {
            checkout_oram_storage(
                id,
                idx.as_ptr(),
                idx.len(),
                data.as_mut_ptr(),
                data.len(),
                meta.as_mut_ptr(),
                meta.len(),
            )
        }
    }

    fn checkin(id: u64, idx: &[u64], data: &[u64], meta: &[u64]) {
        // SAFETY: slices give valid pointers and lengths.
        unsafe {
            checkin_oram_storage(
                id,
                idx.as_ptr(),
                idx.len(),
                data.as_ptr(),
                data.len(),
                meta.as_ptr(),
                meta.len(),
            )
        }
    }

    #[test]
    fn round_trip_through_the_c_interface() {
        let id = allocate(1024, 64, 16);
        assert_ne!(id, 0);
        assert_eq!(last().0, 0);
        let mut data = vec![0u64; 2 * 8];
        let mut meta = vec![u64::MAX; 2 * 2];
        checkout(id, &[3, 1000], &mut data, &mut meta);
        assert_eq!(last().0, 0);
        assert!(meta.iter().all(|&w| w == 0), "fresh metadata reads zero");
        let din: Vec<u64> = (0..16).collect();
        let min: Vec<u64> = (100..104).collect();
        checkin(id, &[3, 1000], &din, &min);
        assert_eq!(last().0, 0);
        checkout(id, &[1000, 3], &mut data, &mut meta);
        assert_eq!(&data[..8], &din[8..]);
        assert_eq!(&data[8..], &din[..8]);
        assert_eq!(meta, [102, 103, 100, 101]);
        release_oram_storage(id);
        assert_eq!(last().0, 0);
        assert!(!live_ids().contains(&id));
    }

    #[test]
    fn ids_are_never_reused_and_stale_ids_are_detected() {
        let a = allocate(4, 8, 8);
        release_oram_storage(a);
        let b = allocate(4, 8, 8);
        assert_ne!(a, b);
        let mut d = [7u64; 1];
        let mut m = [7u64; 1];
        checkout(a, &[0], &mut d, &mut m);
        let (code, msg) = last();
        assert_eq!(code, OcallError::UnknownId as i32);
        assert!(msg.contains(&a.to_string()), "{msg}");
        assert_eq!((d, m), ([7], [7]), "nothing written on failure");
        release_oram_storage(a);
        assert_eq!(last().0, OcallError::UnknownId as i32);
        checkin(0, &[0], &[1], &[1]);
        assert_eq!(last().0, OcallError::UnknownId as i32);
        release_oram_storage(b);
    }

    #[test]
    fn sizes_must_be_multiples_of_eight_and_nonzero() {
        for (count, data, meta) in [
            (4, 12, 8),
            (4, 8, 4),
            (0, 8, 8),
            (4, 0, 8),
            (u64::MAX, 8, 8),
        ] {
            assert_eq!(allocate(count, data, meta), 0, "{count} {data} {meta}");
            assert_eq!(last().0, OcallError::BadSize as i32);
        }
        // SAFETY: a null id pointer is allowed and reported.
        unsafe { allocate_oram_storage(4, 8, 8, std::ptr::null_mut()) };
        assert_eq!(last().0, OcallError::NullId as i32);
    }

    #[test]
    fn every_storage_check_applies() {
        let id = allocate(10, 16, 8);
        let mut d = vec![0u64; 4];
        let mut m = vec![0u64; 2];
        checkout(id, &[1, 10], &mut d, &mut m);
        let (code, msg) = last();
        assert_eq!(code, OcallError::IndexOutOfRange as i32);
        assert!(msg.contains("index 10"), "{msg}");
        checkout(id, &[1, 2], &mut d[..3], &mut m);
        assert_eq!(last().0, OcallError::BadBuffer as i32);
        checkin(id, &[4, 4], &d, &m);
        assert_eq!(last().0, OcallError::DuplicateIndex as i32);
        // SAFETY: null pointers with nonzero lengths are reported, never dereferenced.
        unsafe {
            checkout_oram_storage(
                id,
                std::ptr::null(),
                1,
                d.as_mut_ptr(),
                2,
                m.as_mut_ptr(),
                1,
            )
        };
        assert_eq!(last().0, OcallError::BadBuffer as i32);
        // An empty batch with null pointers is fine.
        // SAFETY: all lengths are zero.
        unsafe {
            checkin_oram_storage(
                id,
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
            )
        };
        assert_eq!(last().0, 0);
        release_oram_storage(id);
    }

    /// A raw input buffer: pointer and length in words.
    type In = (*const u64, usize);
    /// A raw output buffer.
    type Out = (*mut u64, usize);

    /// Calls `checkout_oram_storage` with raw pointers, which may alias.
    fn checkout_raw(id: u64, idx: In, data: Out, meta: Out) {
        // SAFETY: the tests pass pointers that are valid for their lengths, or ones the
        // function must refuse before touching them.
        unsafe { checkout_oram_storage(id, idx.0, idx.1, data.0, data.1, meta.0, meta.1) }
    }

    /// Calls `checkin_oram_storage` with raw pointers.
    fn checkin_raw(id: u64, idx: In, data: In, meta: In) {
        // SAFETY: as in `checkout_raw`.
        unsafe { checkin_oram_storage(id, idx.0, idx.1, data.0, data.1, meta.0, meta.1) }
    }

    #[test]
    fn output_buffers_that_overlap_each_other_or_idx_are_refused() {
        // Items of 4 data words and 2 metadata words; batches of 2 items.
        let id = allocate(16, 32, 16);
        checkin(id, &[1, 2], &[5; 8], &[6; 4]);
        let mut buf = [7u64; 32];
        let base = buf.as_mut_ptr();
        let at = |word: usize| base.wrapping_add(word);
        let idx = [1u64, 2];
        let own_idx = (idx.as_ptr(), 2);
        // The index list itself lies at the start of `buf` in the cases that overlap it.
        let cases: [(&str, In, Out, Out); 6] = [
            ("same start", own_idx, (at(0), 8), (at(0), 4)),
            ("metabuf inside databuf", own_idx, (at(0), 8), (at(3), 4)),
            ("databuf inside metabuf", own_idx, (at(8), 8), (at(6), 4)),
            ("idx inside databuf", (at(4), 2), (at(0), 8), (at(16), 4)),
            ("idx inside metabuf", (at(17), 2), (at(0), 8), (at(16), 4)),
            (
                "idx overlaps the end of metabuf",
                (at(15), 2),
                (at(0), 8),
                (at(12), 4),
            ),
        ];
        for (what, i, d, m) in cases {
            buf = [7u64; 32];
            // The overlapping index lists read 1 and 2 too.
            buf[4] = 1;
            buf[5] = 2;
            buf[15] = 1;
            buf[16] = 2;
            buf[17] = 1;
            buf[18] = 2;
            let before = buf;
            checkout_raw(id, i, d, m);
            let (code, msg) = last();
            assert_eq!(code, OcallError::BadBuffer as i32, "{what}: {msg}");
            assert!(msg.contains("overlap"), "{what}: {msg}");
            assert_eq!(buf, before, "{what}: nothing written");
        }
        // Adjacent buffers share no byte and are fine.
        buf = [7u64; 32];
        checkout_raw(id, own_idx, (at(0), 8), (at(8), 4));
        assert_eq!(last().0, 0, "{}", last().1);
        assert_eq!(&buf[..8], &[5; 8]);
        assert_eq!(&buf[8..12], &[6; 4]);
        // A checkin's inputs are only read, so they may overlap each other and idx.
        buf[..8].copy_from_slice(&[3, 4, 9, 9, 9, 9, 9, 9]);
        checkin_raw(id, (buf.as_ptr(), 2), (buf.as_ptr(), 8), (buf.as_ptr(), 4));
        assert_eq!(last().0, 0, "{}", last().1);
        let (mut d, mut m) = ([0u64; 8], [0u64; 4]);
        checkout(id, &[3, 4], &mut d, &mut m);
        assert_eq!(d, [3, 4, 9, 9, 9, 9, 9, 9]);
        assert_eq!(m, [3, 4, 9, 9]);
        release_oram_storage(id);
    }

    #[test]
    fn huge_lengths_are_refused_without_touching_the_pointer() {
        let id = allocate(16, 8, 8);
        // Aligned and non-null, but no memory is there: a dereference would crash.
        let dangling = std::ptr::NonNull::<u64>::dangling().as_ptr();
        let (mut d, mut m) = ([7u64; 1], [7u64; 1]);
        let idx = [0u64];
        for huge in [usize::MAX, usize::MAX / 8 + 1, isize::MAX as usize / 8 + 1] {
            for (position, what) in ["idx", "databuf", "metabuf"].into_iter().enumerate() {
                let mut ptrs = [idx.as_ptr().cast_mut(), d.as_mut_ptr(), m.as_mut_ptr()];
                let mut lens = [1, 1, 1];
                ptrs[position] = dangling;
                lens[position] = huge;
                checkout_raw(
                    id,
                    (ptrs[0], lens[0]),
                    (ptrs[1], lens[1]),
                    (ptrs[2], lens[2]),
                );
                let (code, msg) = last();
                assert_eq!(
                    code,
                    OcallError::BadBuffer as i32,
                    "checkout {what} {huge}: {msg}"
                );
                assert!(msg.contains("isize::MAX"), "checkout {what} {huge}: {msg}");
                let ptrs = ptrs.map(|p| p.cast_const());
                checkin_raw(
                    id,
                    (ptrs[0], lens[0]),
                    (ptrs[1], lens[1]),
                    (ptrs[2], lens[2]),
                );
                let (code, msg) = last();
                assert_eq!(
                    code,
                    OcallError::BadBuffer as i32,
                    "checkin {what} {huge}: {msg}"
                );
                assert!(msg.starts_with(what), "checkin {what} {huge}: {msg}");
            }
        }
        assert_eq!((d, m), ([7], [7]), "nothing written");
        // Lengths that fit but disagree with the batch are refused before a slice is made of
        // the dangling pointers.
        let big = isize::MAX as usize / 8;
        checkout_raw(id, (idx.as_ptr(), 1), (dangling, big), (dangling, big));
        let (code, msg) = last();
        assert_eq!(code, OcallError::BadBuffer as i32, "{msg}");
        assert!(msg.contains("expected 8"), "{msg}");
        // A range that would wrap around the address space cannot be memory.
        let top = (usize::MAX & !7) as *mut u64;
        checkout_raw(id, (idx.as_ptr(), 1), (top, 1), (m.as_mut_ptr(), 1));
        let (code, msg) = last();
        assert_eq!(code, OcallError::BadBuffer as i32, "{msg}");
        assert!(msg.contains("wraps around"), "{msg}");
        release_oram_storage(id);
    }

    #[test]
    fn null_and_misaligned_pointers_are_refused() {
        let id = allocate(16, 8, 8);
        let idx = [3u64];
        let mut words = [7u64; 4];
        let base = words.as_mut_ptr();
        let null = std::ptr::null_mut::<u64>();
        let odd = base.cast::<u8>().wrapping_add(4).cast::<u64>();
        let cases: [(&str, *mut u64, *mut u64, *mut u64, &str); 6] = [
            ("null idx", null, base, base.wrapping_add(1), "idx is null"),
            (
                "null databuf",
                base.wrapping_add(2),
                null,
                base,
                "databuf is null",
            ),
            (
                "null metabuf",
                base.wrapping_add(2),
                base,
                null,
                "metabuf is null",
            ),
            ("odd idx", odd, base, base.wrapping_add(1), "idx at"),
            ("odd databuf", base.wrapping_add(2), odd, base, "databuf at"),
            ("odd metabuf", base.wrapping_add(2), base, odd, "metabuf at"),
        ];
        for (what, i, d, m, expected) in cases {
            words = [7, 7, 3, 7];
            checkout_raw(id, (i, 1), (d, 1), (m, 1));
            let (code, msg) = last();
            assert_eq!(code, OcallError::BadBuffer as i32, "{what}: {msg}");
            assert!(msg.starts_with(expected), "{what}: {msg}");
            assert_eq!(words, [7, 7, 3, 7], "{what}: nothing written");
            checkin_raw(id, (i, 1), (d, 1), (m, 1));
            assert_eq!(last().0, OcallError::BadBuffer as i32, "{what}");
        }
        let (mut d, mut m) = ([1u64], [1u64]);
        checkout(id, &idx, &mut d, &mut m);
        assert_eq!((d, m), ([0], [0]), "the refused checkins wrote nothing");
        release_oram_storage(id);
        // The id output may be misaligned.
        let mut bytes = [0u8; 16];
        let out = bytes.as_mut_ptr().wrapping_add(3).cast::<u64>();
        // SAFETY: `out` has 8 writable bytes behind it; its alignment is the function's concern.
        unsafe { allocate_oram_storage(4, 8, 8, out) };
        assert_eq!(last().0, 0);
        // SAFETY: as above, read back the same way.
        let written = unsafe { out.read_unaligned() };
        assert!(live_ids().contains(&written));
        release_oram_storage(written);
    }

    #[test]
    fn threads_share_one_storage_through_its_id() {
        let id = allocate(256, 32, 8);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    for r in 0..200u64 {
                        let i = t * 64 + r % 64;
                        checkin(id, &[i], &[i; 4], &[r]);
                        assert_eq!(oram_storage_last_error(), 0);
                        let mut d = [0u64; 4];
                        let mut m = [0u64; 1];
                        checkout(id, &[i], &mut d, &mut m);
                        assert_eq!(oram_storage_last_error(), 0);
                        assert_eq!(d, [i; 4]);
                        assert_eq!(m, [r]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        release_oram_storage(id);
    }
}
