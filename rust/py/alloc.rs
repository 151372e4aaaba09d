//! `oramstore.UntrustedAllocator` and what it hands out: the Python face of [`crate::alloc`].
//!
//! An [`Allocation`](PyAllocation) exports its block through the buffer protocol. The block is
//! only ever freed while no view of it exists: `free()` is refused while a memoryview or numpy
//! array of it is alive, and garbage collection cannot reach the object meanwhile because every
//! view holds a reference to it. Nothing Python can do reaches freed memory.

use std::ffi::c_int;

use parking_lot::Mutex;
use pyo3::exceptions::{PyBufferError, PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{ffi, PyErr};

use super::buffer::ByteBuffer;
use super::storage::size_arg;
use crate::alloc::{
    AllocConfig, Block, Found, RangeInfo, RangeKind, RangeOwner, UntrustedAllocator,
};
use crate::segment::resident_bytes;

/// The alignment `alloc` gives when none is asked for, as `malloc` does on 64-bit systems.
const DEFAULT_ALIGN: usize = 16;

/// Reads a size or address argument, turning negative or huge ints into `ValueError`.
fn usize_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    let value = size_arg(obj, name)?;
    usize::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} does not fit an address, got {obj}")))
}

/// Reads an address to look up: an int outside the address space is no one's address.
fn query_arg(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    match obj.extract::<u64>() {
        Ok(value) => Ok(usize::try_from(value).ok()),
        Err(err) if err.is_instance_of::<PyOverflowError>(obj.py()) => Ok(None),
        Err(err) => Err(err),
    }
}

#[pyclass(module = "oramstore", name = "UntrustedAllocator", frozen)]
pub struct PyUntrustedAllocator {
    inner: UntrustedAllocator,
}

impl PyUntrustedAllocator {
    /// The allocator itself, for placing storages in it.
    pub fn allocator(&self) -> &UntrustedAllocator {
        &self.inner
    }

    fn handle(&self, info: RangeInfo) -> PyRangeHandle {
        PyRangeHandle {
            allocator: self.inner.id(),
            id: info.id,
            start: info.start,
            length: info.len,
            inserted: info.kind == RangeKind::Inserted,
        }
    }
}

#[pymethods]
impl PyUntrustedAllocator {
    #[new]
    #[pyo3(
        signature = (chunk_size = None, *, chunk_limit = None),
        text_signature = "(chunk_size=16777216, *, chunk_limit=None)"
    )]
    fn new(
        chunk_size: Option<&Bound<'_, PyAny>>,
        chunk_limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut config = AllocConfig::default();
        if let Some(size) = chunk_size {
            config.chunk_size = usize_arg(size, "chunk_size")?;
        }
        if let Some(limit) = chunk_limit {
            config.chunk_limit = usize_arg(limit, "chunk_limit")?;
        }
        Ok(PyUntrustedAllocator {
            inner: UntrustedAllocator::with_config(config)?,
        })
    }

    #[getter]
    fn chunk_size(&self) -> usize {
        self.inner.config().chunk_size
    }

    #[getter]
    fn chunk_limit(&self) -> Option<usize> {
        Some(self.inner.config().chunk_limit).filter(|&limit| limit != usize::MAX)
    }

    #[pyo3(signature = (size, align = None), text_signature = "($self, /, size, align=16)")]
    fn alloc(
        &self,
        py: Python<'_>,
        size: &Bound<'_, PyAny>,
        align: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyAllocation> {
        let size = usize_arg(size, "size")?;
        let align = match align {
            Some(align) => usize_arg(align, "align")?,
            None => DEFAULT_ALIGN,
        };
        let inner = &self.inner;
        let block = py.detach(|| inner.alloc_block(size, align))?;
        Ok(PyAllocation::new(block))
    }

    fn insert_range(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<PyRangeHandle> {
        let view = ByteBuffer::writable(buffer, "buffer")?.hold();
        let (start, len) = (view.as_ptr() as usize, view.len());
        // An exporter vouches for its own memory, but a buffer that wraps a foreign address (a
        // ctypes array made with `from_address`) only repeats what its caller claimed. Ranges
        // the allocator refuses anyway are left to its checks and their messages; for the
        // rest, an unmapped page is the one mistake that can be caught cheaply here.
        if start != 0 && len != 0 && start.checked_add(len).is_some() {
            py.detach(|| resident_bytes(start as *const u8, len))
                .map_err(|err| {
                    PyValueError::new_err(format!(
                        "range {start:#x}+{len:#x} is not entirely mapped: {err}"
                    ))
                })?;
        }
        let owner: RangeOwner = Box::new(view);
        let inner = &self.inner;
        let info = py.detach(move || {
            // SAFETY: the held view is the range's owner and lives until the range is removed;
            // while it exists the exporter keeps its memory mapped, writable and the same size.
            // For a view of foreign memory, that is the promise the caller made explicitly by
            // wrapping the address.
            unsafe { inner.insert_range(start as *mut u8, len, Some(owner)) }
        })?;
        Ok(self.handle(info))
    }

    fn remove_range(&self, py: Python<'_>, handle: PyRef<'_, PyRangeHandle>) -> PyResult<()> {
        if handle.allocator != self.inner.id() {
            return Err(PyValueError::new_err(format!(
                "{} belongs to another allocator",
                handle.__repr__()
            )));
        }
        let info = RangeInfo {
            id: handle.id,
            start: handle.start,
            len: handle.length,
            kind: match handle.inserted {
                true => RangeKind::Inserted,
                false => RangeKind::Chunk,
            },
        };
        let inner = &self.inner;
        let removed = py.detach(|| inner.remove_exact(&info))?;
        // The owner (a buffer view) is released here, with the interpreter lock held.
        drop(removed);
        Ok(())
    }

    fn owns(&self, py: Python<'_>, address: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Some(addr) = query_arg(address)? else {
            return Ok(false);
        };
        let inner = &self.inner;
        Ok(py.detach(|| inner.owns(addr as *const u8)))
    }

    fn find(&self, py: Python<'_>, address: &Bound<'_, PyAny>) -> PyResult<Option<PyAddressInfo>> {
        let Some(addr) = query_arg(address)? else {
            return Ok(None);
        };
        let inner = &self.inner;
        let Some(Found { range, block }) = py.detach(|| inner.find(addr as *const u8)) else {
            return Ok(None);
        };
        Ok(Some(PyAddressInfo {
            range: Py::new(py, self.handle(range))?,
            block: block.map(|b| (b.start, b.size)),
        }))
    }

    fn stats(&self, py: Python<'_>) -> PyResult<PyAllocatorStats> {
        let inner = &self.inner;
        let s = py.detach(|| inner.stats());
        let ranges = s
            .ranges
            .iter()
            .map(|r| {
                Py::new(
                    py,
                    PyRangeStats {
                        range: Py::new(py, self.handle(r.range))?,
                        free_bytes: r.free_bytes,
                        used_bytes: r.used_bytes,
                    },
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyAllocatorStats {
            ranges: PyTuple::new(py, ranges)?.unbind(),
            managed_bytes: s.managed_bytes,
            inserted_bytes: s.inserted_bytes,
            chunk_bytes: s.chunk_bytes,
            free_bytes: s.free_bytes,
            chunks: s.chunks,
            chunks_mapped: s.chunks_mapped,
            chunks_released: s.chunks_released,
            live_blocks: s.live_blocks,
            requested_bytes: s.requested_bytes,
            allocated_bytes: s.allocated_bytes,
            cached_blocks: s.cached_blocks,
            cached_bytes: s.cached_bytes,
            cache_hits: s.cache_hits,
            cache_refills: s.cache_refills,
            cache_flushes: s.cache_flushes,
        })
    }

    fn flush_thread_cache(&self, py: Python<'_>) {
        let inner = &self.inner;
        py.detach(|| inner.flush_thread_cache());
    }

    fn __repr__(&self) -> String {
        let config = self.inner.config();
        match self.chunk_limit() {
            Some(limit) => format!(
                "UntrustedAllocator(chunk_size={}, chunk_limit={limit})",
                config.chunk_size
            ),
            None => format!("UntrustedAllocator(chunk_size={})", config.chunk_size),
        }
    }
}

/// The block an `Allocation` holds, and how many buffer views of it are alive.
struct Held {
    block: Option<Block>,
    views: usize,
}

#[pyclass(module = "oramstore", name = "Allocation", frozen)]
pub struct PyAllocation {
    address: usize,
    size: usize,
    held: Mutex<Held>,
}

impl PyAllocation {
    fn new(block: Block) -> Self {
        PyAllocation {
            address: block.as_ptr() as usize,
            size: block.len(),
            held: Mutex::new(Held {
                block: Some(block),
                views: 0,
            }),
        }
    }

    fn freed_error(&self) -> PyErr {
        PyValueError::new_err(format!("the allocation at {:#x} was freed", self.address))
    }

    fn live(&self) -> PyResult<()> {
        match self.held.lock().block {
            Some(_) => Ok(()),
            None => Err(self.freed_error()),
        }
    }
}

#[pymethods]
impl PyAllocation {
    #[getter]
    fn address(&self) -> PyResult<usize> {
        self.live()?;
        Ok(self.address)
    }

    #[getter]
    fn size(&self) -> PyResult<usize> {
        self.live()?;
        Ok(self.size)
    }

    #[getter]
    fn freed(&self) -> bool {
        self.held.lock().block.is_none()
    }

    fn __len__(&self) -> PyResult<usize> {
        self.size()
    }

    fn free(&self, py: Python<'_>) -> PyResult<()> {
        let block = {
            let mut held = self.held.lock();
            if held.block.is_none() {
                return Err(PyValueError::new_err(format!(
                    "the allocation at {:#x} was already freed",
                    self.address
                )));
            }
            if held.views > 0 {
                return Err(PyBufferError::new_err(format!(
                    "cannot free the allocation at {:#x}: {} buffer view(s) of it (memoryview, \
                     numpy array) are still alive",
                    self.address, held.views
                )));
            }
            held.block.take()
        };
        py.detach(move || drop(block));
        Ok(())
    }

    /// # Safety
    ///
    /// `view` must point to a `Py_buffer` to fill in, as the buffer protocol promises.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let mut held = this.held.lock();
        let Some(block) = held.block.as_ref() else {
            // SAFETY: `view` is valid for writes (the protocol's contract); a failed export
            // must leave no object in it.
            unsafe { (*view).obj = std::ptr::null_mut() };
            return Err(this.freed_error());
        };
        // SAFETY: `view` is valid for writes; the block's memory is `len()` bytes, writable,
        // and stays allocated while the view exists, because `free()` is refused and the
        // object cannot be collected while `views` is non-zero or the view holds `slf`.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                block.as_ptr().cast(),
                block.len() as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            // SAFETY: as above.
            unsafe { (*view).obj = std::ptr::null_mut() };
            return Err(PyErr::fetch(slf.py()));
        }
        held.views += 1;
        Ok(())
    }

    /// # Safety
    ///
    /// Called by the interpreter once for every successful `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut held = self.held.lock();
        held.views = held.views.saturating_sub(1);
    }

    fn __repr__(&self) -> String {
        match self.held.lock().block {
            Some(_) => format!(
                "Allocation(address={:#x}, size={})",
                self.address, self.size
            ),
            None => format!("Allocation(address={:#x}, freed)", self.address),
        }
    }
}

impl Drop for PyAllocation {
    fn drop(&mut self) {
        let Some(block) = self.held.get_mut().block.take() else {
            return;
        };
        // Freeing may take the allocator's lock or give a chunk back to the kernel; let other
        // threads run meanwhile. An interpreter that is shutting down frees it right here.
        Python::try_attach(|py| py.detach(move || drop(block)));
    }
}

#[pyclass(module = "oramstore", name = "RangeHandle", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyRangeHandle {
    allocator: u64,
    id: u64,
    start: usize,
    length: usize,
    inserted: bool,
}

#[pymethods]
impl PyRangeHandle {
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    #[getter]
    fn start(&self) -> usize {
        self.start
    }

    #[getter]
    fn length(&self) -> usize {
        self.length
    }

    #[getter]
    fn end(&self) -> usize {
        self.start + self.length
    }

    #[getter]
    fn inserted(&self) -> bool {
        self.inserted
    }

    fn __repr__(&self) -> String {
        format!(
            "RangeHandle(start={:#x}, length={:#x}, {}, id={})",
            self.start,
            self.length,
            if self.inserted { "inserted" } else { "chunk" },
            self.id
        )
    }
}

#[pyclass(module = "oramstore", name = "AddressInfo", frozen, get_all)]
pub struct PyAddressInfo {
    range: Py<PyRangeHandle>,
    block: Option<(usize, usize)>,
}

#[pymethods]
impl PyAddressInfo {
    fn __repr__(&self) -> String {
        let range = self.range.get().__repr__();
        match self.block {
            Some((start, size)) => {
                format!("AddressInfo(range={range}, block=({start:#x}, {size}))")
            }
            None => format!("AddressInfo(range={range}, block=None)"),
        }
    }
}

#[pyclass(module = "oramstore", name = "RangeStats", frozen, get_all)]
pub struct PyRangeStats {
    range: Py<PyRangeHandle>,
    free_bytes: usize,
    used_bytes: usize,
}

#[pymethods]
impl PyRangeStats {
    fn __repr__(&self) -> String {
        format!(
            "RangeStats(range={}, free_bytes={}, used_bytes={})",
            self.range.get().__repr__(),
            self.free_bytes,
            self.used_bytes
        )
    }
}

#[pyclass(module = "oramstore", name = "AllocatorStats", frozen, get_all)]
pub struct PyAllocatorStats {
    ranges: Py<PyTuple>,
    managed_bytes: usize,
    inserted_bytes: usize,
    chunk_bytes: usize,
    free_bytes: usize,
    chunks: usize,
    chunks_mapped: u64,
    chunks_released: u64,
    live_blocks: u64,
    requested_bytes: u64,
    allocated_bytes: u64,
    cached_blocks: u64,
    cached_bytes: u64,
    cache_hits: u64,
    cache_refills: u64,
    cache_flushes: u64,
}

#[pymethods]
impl PyAllocatorStats {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "AllocatorStats(ranges={}, managed_bytes={}, inserted_bytes={}, chunk_bytes={}, \
             free_bytes={}, chunks={}, chunks_mapped={}, chunks_released={}, live_blocks={}, \
             requested_bytes={}, allocated_bytes={}, cached_blocks={}, cached_bytes={}, \
             cache_hits={}, cache_refills={}, cache_flushes={})",
            self.ranges.bind(py).len(),
            self.managed_bytes,
            self.inserted_bytes,
            self.chunk_bytes,
            self.free_bytes,
            self.chunks,
            self.chunks_mapped,
            self.chunks_released,
            self.live_blocks,
            self.requested_bytes,
            self.allocated_bytes,
            self.cached_blocks,
            self.cached_bytes,
            self.cache_hits,
            self.cache_refills,
            self.cache_flushes,
        )
    }
}
