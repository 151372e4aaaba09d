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
//! The EDL's functions return nothing, so a failure is reported the way `errno` is: the call
//! writes nothing to the caller's buffers, logs the error, and records it for the calling
//! thread, where [`oram_storage_last_error`] returns its code and
//! [`oram_storage_last_error_message`] its text. A successful call clears it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_char;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use crate::storage::{Storage, StorageError};

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
    /// A buffer length does not match the batch, or a pointer is null with a nonzero length.
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

/// Builds a slice from a C pointer and length, accepting a null pointer only for length 0.
///
/// # Safety
///
/// A non-null `ptr` must be valid for reads of `len` elements for the lifetime `'a`.
unsafe fn slice_in<'a, T>(
    ptr: *const T,
    len: usize,
    what: &str,
) -> Result<&'a [T], (OcallError, String)> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err((
            OcallError::BadBuffer,
            format!("{what} is null but its length is {len}"),
        ));
    }
    // SAFETY: non-null, and the caller promises `len` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Like [`slice_in`], for an output buffer.
///
/// # Safety
///
/// A non-null `ptr` must be valid for writes of `len` elements for `'a`, and not aliased.
unsafe fn slice_out<'a, T>(
    ptr: *mut T,
    len: usize,
    what: &str,
) -> Result<&'a mut [T], (OcallError, String)> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err((
            OcallError::BadBuffer,
            format!("{what} is null but its length is {len}"),
        ));
    }
    // SAFETY: non-null, and the caller promises `len` writable, unaliased elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
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

/// Allocates a storage of `count` items of `data_size` + `meta_size` bytes and writes its id to
/// `*id`, or 0 if it cannot.
///
/// # Safety
///
/// `id` must be null or valid for one `u64` write.
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
        // SAFETY: non-null, and the caller promises it is valid for a write.
        unsafe { id.write(0) };
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
        unsafe { id.write(new_id) };
        Ok(())
    })();
    record(result);
}

/// Releases the storage with this id. Copies in progress on other threads finish first.
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

/// Copies the items at `idx[..idx_len]` into `databuf` and `metabuf`.
///
/// # Safety
///
/// Each non-null pointer must be valid for its length in `u64`s (reads for `idx`, writes for
/// the buffers), and the output buffers must not alias each other or `idx`.
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
        // SAFETY: the caller's contract on each pointer and length.
        let idx = unsafe { slice_in(idx, idx_len, "idx") }?;
        // SAFETY: as above.
        let data = unsafe { slice_out(databuf, databuf_len, "databuf") }?;
        // SAFETY: as above.
        let meta = unsafe { slice_out(metabuf, metabuf_len, "metabuf") }?;
        storage
            .checkout(idx, words_as_bytes_mut(data), words_as_bytes_mut(meta))
            .map_err(fail)
    })();
    record(result);
}

/// Copies the items in `databuf` and `metabuf` to the indices `idx[..idx_len]`.
///
/// # Safety
///
/// Each non-null pointer must be valid for reads of its length in `u64`s.
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
        // SAFETY: the caller's contract on each pointer and length.
        let idx = unsafe { slice_in(idx, idx_len, "idx") }?;
        // SAFETY: as above.
        let data = unsafe { slice_in(databuf, databuf_len, "databuf") }?;
        // SAFETY: as above.
        let meta = unsafe { slice_in(metabuf, metabuf_len, "metabuf") }?;
        storage
            .checkin(idx, words_as_bytes(data), words_as_bytes(meta))
            .map_err(fail)
    })();
    record(result);
}

/// The code of the calling thread's last OCALL failure, or 0 if its last call succeeded.
#[no_mangle]
pub extern "C" fn oram_storage_last_error() -> i32 {
    LAST_ERROR.with(|e| e.borrow().code as i32)
}

/// Copies the text of the calling thread's last OCALL failure into `buf` (truncated to
/// `buf_len - 1` bytes, NUL-terminated) and returns the full text's length in bytes.
///
/// # Safety
///
/// `buf` must be null or valid for writes of `buf_len` bytes.
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
