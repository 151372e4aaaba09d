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

    /// `UntrustedStorage.open(path, count=None, data_size=None, meta_size=None, *,
    /// create=False)`: a storage in a file.
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

    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyString>> {
        // A str, decoded as `os.fsdecode` would, rather than PyO3's `pathlib.Path`.
        let path = self.inner.path()?.as_os_str();
        match path.into_pyobject(py) {
            Ok(text) => Some(text),
            Err(never) => match never {},
        }
    }

    #[getter]
    fn count(&self) -> u64 {
        self.inner.layout().count
    }

    #[getter]
    fn data_size(&self) -> usize {
        self.inner.layout().data_size
    }

    #[getter]
    fn meta_size(&self) -> usize {
        self.inner.layout().meta_size
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.layout().nbytes()
    }

    #[getter]
    fn released(&self) -> bool {
        self.inner.is_released()
    }

    fn __len__(&self) -> usize {
        self.inner.layout().count as usize
    }

    fn resident_bytes(&self) -> PyResult<usize> {
        Ok(self.inner.resident_bytes()?)
    }

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

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.flush())?;
        Ok(())
    }

    fn release(&self, py: Python<'_>) {
        py.detach(|| self.inner.release());
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
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

/// Bytes of segments held by all live storages of this process.
#[pyfunction]
pub fn allocated_bytes() -> u64 {
    crate::storage::allocated_bytes()
}
