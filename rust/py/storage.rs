//! `oramstore.UntrustedStorage`: the Python face of [`crate::storage::Storage`].

use std::path::PathBuf;

use numpy::{PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use super::alloc::PyUntrustedAllocator;
use super::arrays::empty_u8;
use super::buffer::ByteBuffer;
use super::indices::indices_from;
use crate::storage::Storage;

/// A raw pointer that may cross into code running without the interpreter lock.
///
/// The memory it points to is held alive by a buffer view or array owned by the caller for
/// the whole call, so moving the address to another thread is sound.
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: see the type's documentation; only the address moves.
unsafe impl Send for SendPtr {}

impl SendPtr {
    /// # Safety
    ///
    /// `self.0..self.0 + len` must be valid for reads and writes and unaliased for `'a`.
    unsafe fn slice_mut<'a>(self, len: usize) -> &'a mut [u8] {
        if len == 0 {
            return &mut [];
        }
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0, len) }
    }

    /// # Safety
    ///
    /// `self.0..self.0 + len` must be valid for reads for `'a`.
    unsafe fn slice<'a>(self, len: usize) -> &'a [u8] {
        if len == 0 {
            return &[];
        }
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(self.0, len) }
    }
}

/// Reads a size argument, turning negative or huge ints into `ValueError`.
pub fn size_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    obj.extract::<u64>().map_err(|err| {
        if err.is_instance_of::<PyOverflowError>(obj.py()) {
            PyValueError::new_err(format!(
                "{name} must be a positive integer below 2**64, got {obj}"
            ))
        } else {
            err
        }
    })
}

/// A batch of items as `(data, meta)` arrays.
type Items<'py> = (Bound<'py, PyArray2<u8>>, Bound<'py, PyArray2<u8>>);

/// ``count`` fixed-size items, each ``data_size`` bytes of data and ``meta_size`` bytes of
/// metadata, kept in two lazily mapped segments of host memory, or in a file (see
/// :meth:`open`).
///
/// Creating a storage touches no memory: a multi-GiB storage is ready in microseconds and its
/// resident size grows only as items are written. The metadata of an item that was never
/// checked in reads as zeros; its data may read as anything.
///
/// Items move in batches. Copies release the interpreter lock, and one storage may be used
/// from several threads: checkouts run in parallel, checkins one at a time.
///
/// The memory is accounted in :func:`allocated_bytes` and every allocation and release is
/// logged on the ``"oramstore"`` logger.
///
/// Raises:
///     ValueError: a size is zero or negative, or ``count * size`` overflows.
///     MemoryError: the kernel refuses the mapping.
///     TypeError: a size is not an int.
#[pyclass(module = "oramstore", name = "UntrustedStorage", frozen)]
pub struct PyUntrustedStorage {
    inner: Storage,
}

impl PyUntrustedStorage {
    /// Wraps a storage built elsewhere (for example in an allocator's blocks).
    pub fn from_storage(inner: Storage) -> Self {
        PyUntrustedStorage { inner }
    }

    fn checkout_to(
        &self,
        py: Python<'_>,
        indices: &[u64],
        data: SendPtr,
        data_len: usize,
        meta: SendPtr,
        meta_len: usize,
    ) -> PyResult<()> {
        py.detach(move || {
            // SAFETY: both pointers come from buffers or arrays the caller holds for the whole
            // call, with the lengths given; the storage rejects overlap with its own memory.
            let (d, m) = unsafe { (data.slice_mut(data_len), meta.slice_mut(meta_len)) };
            self.inner.checkout(indices, d, m)
        })?;
        Ok(())
    }
}

#[pymethods]
impl PyUntrustedStorage {
    /// With ``allocator``, both segments are blocks of that :class:`UntrustedAllocator`
    /// instead of fresh mappings. The metadata segment is then zeroed once here, since the
    /// allocator's memory may hold anything; the data segment still gets no initialising pass.
    /// The storage keeps the allocator alive, and its blocks keep their range from being
    /// removed, until the storage is released.
    ///
    /// Raises:
    ///     MemoryError: the allocator has no room and may map no more memory.
    #[new]
    #[pyo3(signature = (count, data_size, meta_size, *, allocator = None))]
    fn new(
        py: Python<'_>,
        count: &Bound<'_, PyAny>,
        data_size: &Bound<'_, PyAny>,
        meta_size: &Bound<'_, PyAny>,
        allocator: Option<&Bound<'_, PyUntrustedAllocator>>,
    ) -> PyResult<Self> {
        let count = size_arg(count, "count")?;
        let data_size = size_arg(data_size, "data_size")?;
        let meta_size = size_arg(meta_size, "meta_size")?;
        let inner = match allocator {
            None => py.detach(|| Storage::new(count, data_size, meta_size))?,
            // The storage's blocks hold the allocator, so it outlives the Python object.
            Some(allocator) => {
                let allocator = allocator.get().allocator();
                py.detach(|| allocator.place_storage(count, data_size, meta_size))?
            }
        };
        Ok(PyUntrustedStorage { inner })
    }

    /// A storage whose items live in the file at ``path``: durable, and as large as the
    /// disk allows rather than memory.
    ///
    /// With ``create=True`` the file must not exist, and all three sizes are required: a
    /// 4096-byte header is written and the file's length set, and nothing else, so the file
    /// is sparse and takes disk space only as items are written (a 256 GiB storage is created
    /// at once). Otherwise the file must exist and its header gives the sizes; a size given
    /// must match it. The layout of the file is in the README ("On a file").
    ///
    /// The storage works like one in memory: the same checks and errors, copies with the
    /// interpreter lock released, never-written items read as zeros (data too). Items move by
    /// positioned reads and writes through the kernel's page cache, so the file takes none of
    /// the process's memory; the disk reads of everything a batch misses in the page cache are
    /// queued at once, before the call waits on any. Checkins are durable after :meth:`flush`.
    ///
    /// The host owns the file and may change it at any time: bytes past its end (a truncated
    /// file) read as zeros, and writes go exactly to the items' bytes.
    ///
    /// Raises:
    ///     FileExistsError: ``create=True`` and the file exists.
    ///     FileNotFoundError: ``create=False`` and the file does not exist.
    ///     TypeError: ``create=True`` without all three sizes, or ``path`` is not a str or
    ///         ``os.PathLike``.
    ///     ValueError: a size is not valid, a size differs from the header's, or the file is
    ///         not a valid storage file (wrong magic or format version, sizes that overflow,
    ///         shorter than its header, not a regular file).
    ///     OSError: any other refusal by the system, with its ``errno`` and ``filename``.
    #[classmethod]
    #[pyo3(signature = (path, count = None, data_size = None, meta_size = None, *, create = false))]
    fn open(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        count: Option<&Bound<'_, PyAny>>,
        data_size: Option<&Bound<'_, PyAny>>,
        meta_size: Option<&Bound<'_, PyAny>>,
        create: bool,
    ) -> PyResult<Self> {
        let path: PathBuf = path.extract().map_err(|err: PyErr| {
            if err.is_instance_of::<PyTypeError>(py) {
                PyTypeError::new_err(format!(
                    "path must be a str or an os.PathLike of str, got {}",
                    path.get_type()
                        .name()
                        .map_or_else(|_| "?".into(), |name| name.to_string())
                ))
            } else {
                err
            }
        })?;
        let size =
            |obj: Option<&Bound<'_, PyAny>>, name| obj.map(|o| size_arg(o, name)).transpose();
        let count = size(count, "count")?;
        let data_size = size(data_size, "data_size")?;
        let meta_size = size(meta_size, "meta_size")?;
        let inner = if create {
            let (Some(count), Some(data_size), Some(meta_size)) = (count, data_size, meta_size)
            else {
                let missing: Vec<&str> = [
                    ("count", count),
                    ("data_size", data_size),
                    ("meta_size", meta_size),
                ]
                .into_iter()
                .filter_map(|(name, value)| value.is_none().then_some(name))
                .collect();
                return Err(PyTypeError::new_err(format!(
                    "UntrustedStorage.open(create=True) needs count, data_size and meta_size; \
                     missing: {}",
                    missing.join(", ")
                )));
            };
            py.detach(|| Storage::create_file(&path, count, data_size, meta_size))?
        } else {
            py.detach(|| Storage::open_file(&path, count, data_size, meta_size))?
        };
        Ok(PyUntrustedStorage { inner })
    }

    /// The storage's file as an absolute path, or ``None`` for a storage in memory.
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        // A str, decoded as `os.fsdecode` would, rather than PyO3's `pathlib.Path`.
        let path = self.inner.path()?.as_os_str();
        match path.into_pyobject(py) {
            Ok(text) => Some(text),
            Err(never) => match never {},
        }
    }

    /// Number of items.
    #[getter]
    fn count(&self) -> u64 {
        self.inner.layout().count
    }

    /// Bytes of data per item.
    #[getter]
    fn data_size(&self) -> usize {
        self.inner.layout().data_size
    }

    /// Bytes of metadata per item.
    #[getter]
    fn meta_size(&self) -> usize {
        self.inner.layout().meta_size
    }

    /// Virtual (or, in a file, logical) bytes of both segments,
    /// ``count * (data_size + meta_size)``.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.layout().nbytes()
    }

    /// Whether :meth:`release` has been called.
    #[getter]
    fn released(&self) -> bool {
        self.inner.is_released()
    }

    /// Number of items.
    fn __len__(&self) -> usize {
        self.inner.layout().count as usize
    }

    /// Bytes of both segments resident in physical memory, as the kernel reports them.
    ///
    /// Always 0 for a storage in a file: its bytes are in the kernel's page cache, which is not
    /// the process's memory.
    fn resident_bytes(&self) -> PyResult<usize> {
        Ok(self.inner.resident_bytes()?)
    }

    /// Copy the items at ``indices`` out, in the order given; an index may repeat.
    ///
    /// Returns:
    ///     ``(data, meta)``, new arrays of shape ``(k, data_size)`` and ``(k, meta_size)``.
    ///
    /// Raises:
    ///     IndexError: an index is negative or not below ``count``.
    ///     TypeError: ``indices`` is not a sequence of ints or an integer array.
    ///     StorageReleasedError: the storage was released.
    ///     OSError: reading the storage's file failed.
    fn checkout<'py>(&self, py: Python<'py>, indices: &Bound<'py, PyAny>) -> PyResult<Items<'py>> {
        let indices = indices_from(indices)?;
        let layout = self.inner.layout();
        // Check before allocating, so a bad index never costs a large allocation.
        layout.check_indices(&indices)?;
        if self.inner.is_released() {
            return Err(crate::storage::StorageError::Released.into());
        }
        let k = indices.len();
        let data = empty_u8(py, k, layout.data_size)?;
        let meta = empty_u8(py, k, layout.meta_size)?;
        self.checkout_to(
            py,
            &indices,
            SendPtr(data.data()),
            k * layout.data_size,
            SendPtr(meta.data()),
            k * layout.meta_size,
        )?;
        Ok((data, meta))
    }

    /// Like :meth:`checkout`, into caller buffers, allocating nothing.
    ///
    /// ``data_out`` and ``meta_out`` must be writable C-contiguous buffers of exactly
    /// ``k * data_size`` and ``k * meta_size`` bytes. Nothing is written if any check fails.
    ///
    /// Raises:
    ///     ValueError: a buffer has the wrong length, is not C-contiguous, or overlaps the
    ///         other buffer or the storage's own memory.
    ///     TypeError: a buffer is read-only or not a buffer.
    fn checkout_into(
        &self,
        py: Python<'_>,
        indices: &Bound<'_, PyAny>,
        data_out: &Bound<'_, PyAny>,
        meta_out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let indices = indices_from(indices)?;
        let data = ByteBuffer::writable(data_out, "data_out")?;
        let meta = ByteBuffer::writable(meta_out, "meta_out")?;
        if data.as_ptr() == meta.as_ptr() && !data.is_empty() {
            return Err(PyValueError::new_err(
                "data_out and meta_out must be distinct buffers",
            ));
        }
        let (dp, dl, mp, ml) = (
            SendPtr(data.as_ptr()),
            data.len(),
            SendPtr(meta.as_ptr()),
            meta.len(),
        );
        if ranges_overlap(dp.0, dl, mp.0, ml) {
            return Err(PyValueError::new_err(
                "data_out and meta_out must not overlap",
            ));
        }
        self.checkout_to(py, &indices, dp, dl, mp, ml)
    }

    /// Copy item ``k`` of ``data`` and ``meta`` to the item at ``indices[k]``.
    ///
    /// ``data`` and ``meta`` are any C-contiguous buffers (bytes, bytearray, memoryview, numpy)
    /// of exactly ``k * data_size`` and ``k * meta_size`` bytes. Indices must be distinct.
    /// Nothing is written if any check fails; in a file, an I/O error may leave part of the
    /// batch written.
    ///
    /// Raises:
    ///     IndexError: an index is negative or not below ``count``.
    ///     ValueError: an index repeats, or a buffer has the wrong length or is not
    ///         C-contiguous.
    ///     TypeError: a buffer is not a buffer.
    ///     OSError: writing the storage's file failed.
    fn checkin(
        &self,
        py: Python<'_>,
        indices: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let indices = indices_from(indices)?;
        let data = ByteBuffer::readable(data, "data")?;
        let meta = ByteBuffer::readable(meta, "meta")?;
        let (dp, dl, mp, ml) = (
            SendPtr(data.as_ptr()),
            data.len(),
            SendPtr(meta.as_ptr()),
            meta.len(),
        );
        py.detach(move || {
            // SAFETY: both views are held for the whole call with the lengths given.
            let (d, m) = unsafe { (dp.slice(dl), mp.slice(ml)) };
            self.inner.checkin(&indices, d, m)
        })?;
        Ok(())
    }

    /// Make every checkin so far durable (``fdatasync`` of the file). Does nothing for a
    /// storage in memory.
    ///
    /// Raises:
    ///     StorageReleasedError: the storage was released.
    ///     OSError: the system could not write the file back.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.flush())?;
        Ok(())
    }

    /// Give the memory back, or close the file, now. Any later call raises
    /// :class:`StorageReleasedError`.
    ///
    /// The file stays on disk; release does not flush, so checkins since the last
    /// :meth:`flush` may not survive a crash. Waits for copies in progress on other threads.
    /// Calling it again does nothing.
    fn release(&self, py: Python<'_>) {
        py.detach(|| self.inner.release());
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Release the storage.
    #[pyo3(signature = (*_args), text_signature = "($self, exc_type, exc, tb, /)")]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.release(py);
        false
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let l = self.inner.layout();
        let path = match self.path(py) {
            Some(path) => format!(", path={}", path.repr()?),
            None => String::new(),
        };
        Ok(format!(
            "UntrustedStorage(count={}, data_size={}, meta_size={}{path}{})",
            l.count,
            l.data_size,
            l.meta_size,
            if self.inner.is_released() {
                ", released"
            } else {
                ""
            }
        ))
    }
}

fn ranges_overlap(a: *mut u8, a_len: usize, b: *mut u8, b_len: usize) -> bool {
    let (a, b) = (a as usize, b as usize);
    a_len != 0 && b_len != 0 && a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// Bytes of segments held by all live storages of this process (virtual, both segments; a
/// storage in a file counts its logical size).
#[pyfunction]
pub fn allocated_bytes() -> u64 {
    crate::storage::allocated_bytes()
}
