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

/// An allocator of untrusted memory, over chunks it maps itself and ranges inserted by the
/// caller (device buffers, shared memory, mapped files).
///
/// Blocks are powers of two from 16 bytes up, split and merged buddy-fashion, and aligned to
/// their size. All bookkeeping lives in the allocator's own memory, never in the ranges it
/// manages, so rewriting untrusted memory cannot steer it. Blocks up to 1 MiB go through
/// per-thread caches; a block may be freed on any thread.
///
/// Own chunks are ``chunk_size`` bytes (a larger request gets a chunk of its own); empty ones
/// are given back to the kernel, except one kept in reserve.
///
/// Args:
///     chunk_size: bytes of each own chunk, a power of two of at least 64 KiB.
///     chunk_limit: the most bytes of own chunks mapped at once; ``0`` serves only inserted
///         ranges. No limit by default.
///
/// Raises:
///     ValueError: ``chunk_size`` is not a power of two of at least 64 KiB.
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

    /// Bytes of each own chunk.
    #[getter]
    fn chunk_size(&self) -> usize {
        self.inner.config().chunk_size
    }

    /// The most bytes of own chunks mapped at once, or ``None`` for no limit.
    #[getter]
    fn chunk_limit(&self) -> Option<usize> {
        Some(self.inner.config().chunk_limit).filter(|&limit| limit != usize::MAX)
    }

    /// Allocate ``size`` bytes aligned to ``align`` bytes. The contents are arbitrary.
    ///
    /// Raises:
    ///     ValueError: ``size`` is zero or negative, ``align`` is not a power of two, or the
    ///         block they need does not fit the address space.
    ///     MemoryError: no managed range has room and no chunk may or can be mapped.
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

    /// Manage the memory of ``buffer`` (an ``mmap.mmap``, a numpy array, ...) as well.
    ///
    /// The buffer must be writable and C-contiguous, and its start and length multiples of 16
    /// bytes. The allocator holds a view of it until the range is removed, so the exporter
    /// can neither close nor resize it meanwhile.
    ///
    /// Memory that a foreign library mapped is inserted by wrapping its address explicitly,
    /// which makes the promise visible in the caller's code::
    ///
    ///     buf = (ctypes.c_char * length).from_address(address)
    ///     handle = allocator.insert_range(buf)
    ///
    /// Nothing then keeps that memory alive: the caller must keep it mapped, readable and
    /// writable until the range is removed (or the allocator dropped). A range that is not
    /// entirely mapped is refused; one that is mapped without write access is not detected.
    ///
    /// Raises:
    ///     TypeError: ``buffer`` is read-only or not a buffer.
    ///     ValueError: the buffer is empty, not C-contiguous, not aligned, not entirely
    ///         mapped, or overlaps a range the allocator already manages.
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

    /// Stop managing an inserted range and release the buffer it came from.
    ///
    /// Nothing is ever served from the range afterwards.
    ///
    /// Raises:
    ///     RangeInUseError: blocks in the range are still allocated (``live_blocks`` says how
    ///         many).
    ///     ValueError: the range was already removed, belongs to another allocator, or is one
    ///         of the allocator's own chunks.
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

    /// Whether ``address`` lies in a range this allocator manages.
    fn owns(&self, py: Python<'_>, address: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Some(addr) = query_arg(address)? else {
            return Ok(false);
        };
        let inner = &self.inner;
        Ok(py.detach(|| inner.owns(addr as *const u8)))
    }

    /// The managed range that contains ``address`` and the live block that contains it, or
    /// ``None`` if no managed range does.
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

    /// A snapshot of the allocator's statistics.
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

    /// Give the calling thread's cached free blocks back to the shared structure.
    ///
    /// Never needed for correctness; it lets empty chunks go back to the kernel sooner.
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

/// A block of an :class:`UntrustedAllocator`, usable wherever a writable buffer is, for
/// example ``numpy.frombuffer(blk, dtype=numpy.uint8)``.
///
/// The block is freed by :meth:`free`, or when the object is garbage collected. While a
/// memoryview or numpy array of it is alive it cannot be freed, so no view ever points to
/// freed memory. After :meth:`free`, every use raises ``ValueError``.
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
    /// Address of the first byte.
    #[getter]
    fn address(&self) -> PyResult<usize> {
        self.live()?;
        Ok(self.address)
    }

    /// Bytes asked for; the buffer has exactly this many.
    #[getter]
    fn size(&self) -> PyResult<usize> {
        self.live()?;
        Ok(self.size)
    }

    /// Whether :meth:`free` has been called.
    #[getter]
    fn freed(&self) -> bool {
        self.held.lock().block.is_none()
    }

    /// Bytes asked for.
    fn __len__(&self) -> PyResult<usize> {
        self.size()
    }

    /// Give the block back to its allocator now.
    ///
    /// Raises:
    ///     ValueError: the allocation was already freed.
    ///     BufferError: a memoryview or numpy array of the block is still alive.
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

/// A range managed by an :class:`UntrustedAllocator`, as returned by
/// :meth:`UntrustedAllocator.insert_range` and :meth:`UntrustedAllocator.find`.
///
/// Handles compare equal when they name the same range; a range inserted again after its
/// removal gets a new identity.
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
    /// An identifier unique within the allocator.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Address of the first byte.
    #[getter]
    fn start(&self) -> usize {
        self.start
    }

    /// Length in bytes.
    #[getter]
    fn length(&self) -> usize {
        self.length
    }

    /// Address one past the last byte.
    #[getter]
    fn end(&self) -> usize {
        self.start + self.length
    }

    /// True for an inserted range, false for one of the allocator's own chunks.
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

/// What :meth:`UntrustedAllocator.find` knows about an address.
#[pyclass(module = "oramstore", name = "AddressInfo", frozen, get_all)]
pub struct PyAddressInfo {
    /// The managed range that contains the address.
    range: Py<PyRangeHandle>,
    /// ``(start, size)`` of the live block that contains the address, ``None`` if it lies
    /// in free memory. ``size`` is the block's full size, the request rounded up to a power of
    /// two.
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

/// Statistics of one managed range.
#[pyclass(module = "oramstore", name = "RangeStats", frozen, get_all)]
pub struct PyRangeStats {
    /// The range.
    range: Py<PyRangeHandle>,
    /// Bytes in free blocks.
    free_bytes: usize,
    /// Bytes in live blocks and in free blocks held by thread caches.
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

/// A snapshot of an :class:`UntrustedAllocator`'s statistics.
///
/// While other threads allocate, the numbers are a moment's approximation. When they are
/// quiet, ``free_bytes + allocated_bytes + cached_bytes == managed_bytes``.
#[pyclass(module = "oramstore", name = "AllocatorStats", frozen, get_all)]
pub struct PyAllocatorStats {
    /// Every managed range, by address.
    ranges: Py<PyTuple>,
    /// Bytes of all managed ranges.
    managed_bytes: usize,
    /// Bytes of inserted ranges.
    inserted_bytes: usize,
    /// Bytes of own chunks.
    chunk_bytes: usize,
    /// Bytes in free blocks of all ranges.
    free_bytes: usize,
    /// Own chunks mapped now.
    chunks: usize,
    /// Own chunks mapped since the allocator was created.
    chunks_mapped: u64,
    /// Own chunks given back since the allocator was created.
    chunks_released: u64,
    /// Allocated blocks.
    live_blocks: u64,
    /// Bytes asked for by the allocated blocks.
    requested_bytes: u64,
    /// Bytes of the allocated blocks, each rounded up to its power-of-two size.
    allocated_bytes: u64,
    /// Free blocks held by thread caches.
    cached_blocks: u64,
    /// Bytes of the free blocks held by thread caches.
    cached_bytes: u64,
    /// Allocations a thread cache served without refilling.
    cache_hits: u64,
    /// Batches thread caches fetched from the shared structure.
    cache_refills: u64,
    /// Batches thread caches gave back to the shared structure.
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
