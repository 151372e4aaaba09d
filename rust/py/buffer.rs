//! Byte views of any object that exports the buffer protocol.
//!
//! PyO3's typed `PyBuffer<T>` insists that the exporter's item format matches `T`; the storage
//! only moves bytes, so it takes any C-contiguous buffer (bytes, bytearray, memoryview, numpy
//! arrays of any dtype, mmap) and looks at its raw bytes.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, PyErr};

/// A held buffer view. The exporter cannot resize or free the memory while it lives.
///
/// It is tied to the interpreter lock's lifetime and is not `Send`, so it is always released
/// with the lock held; pass [`ByteBuffer::as_ptr`] into code that runs without the lock.
pub struct ByteBuffer<'py> {
    view: Box<ffi::Py_buffer>,
    _py: PhantomData<Python<'py>>,
}

impl<'py> ByteBuffer<'py> {
    /// A read-only view of `obj`'s bytes. `what` names the argument in error messages.
    pub fn readable(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<ByteBuffer<'py>> {
        let view =
            acquire(obj, ffi::PyBUF_STRIDES).map_err(|cause| not_a_buffer(obj, what, cause))?;
        view.require_c_contiguous(obj, what)?;
        Ok(view)
    }

    /// A writable view of `obj`'s bytes.
    pub fn writable(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<ByteBuffer<'py>> {
        let view = match acquire(obj, ffi::PyBUF_STRIDES | ffi::PyBUF_WRITABLE) {
            Ok(view) => view,
            Err(cause) => {
                // Tell a read-only buffer apart from something that is no buffer at all.
                return Err(match acquire(obj, ffi::PyBUF_STRIDES) {
                    Ok(_) => PyTypeError::new_err(format!(
                        "{what} must be a writable buffer, got a read-only {}",
                        type_name(obj)
                    )),
                    Err(_) => not_a_buffer(obj, what, cause),
                });
            }
        };
        view.require_c_contiguous(obj, what)?;
        Ok(view)
    }

    fn require_c_contiguous(&self, obj: &Bound<'py, PyAny>, what: &str) -> PyResult<()> {
        // SAFETY: `self.view` is a buffer view filled in by a successful PyObject_GetBuffer.
        if unsafe { ffi::PyBuffer_IsContiguous(&*self.view, b'C' as _) } == 1 {
            Ok(())
        } else {
            Err(PyValueError::new_err(format!(
                "{what} must be a C-contiguous buffer, got a non-contiguous {}",
                type_name(obj)
            )))
        }
    }

    /// The first byte of the buffer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.view.buf.cast()
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        // A successful export never has a negative length.
        self.view.len as usize
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ByteBuffer<'_> {
    /// Keeps the view beyond the interpreter lock's scope, for memory that must stay exported
    /// (and so mapped and unresized) for as long as some Rust structure uses it.
    pub fn hold(self) -> HeldBuffer {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the view moves out exactly once and is released
        // by the `HeldBuffer` instead.
        let view = unsafe { std::ptr::read(&this.view) };
        HeldBuffer { view }
    }
}

/// A buffer view that is not tied to the interpreter lock: it may be moved to and dropped on
/// any thread, and takes the lock to release the view.
pub struct HeldBuffer {
    view: Box<ffi::Py_buffer>,
}

// SAFETY: the view is only read (for its pointer and length) without the lock, and released
// with the lock held; the exporter keeps the memory valid until then, whichever thread holds it.
unsafe impl Send for HeldBuffer {}
// SAFETY: see `Send`; shared references give out nothing but the pointer and length.
unsafe impl Sync for HeldBuffer {}

impl HeldBuffer {
    /// The first byte of the buffer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.view.buf.cast()
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.view.len as usize
    }
}

impl Drop for HeldBuffer {
    fn drop(&mut self) {
        // An interpreter that is shutting down cannot be attached to; the view is then left to
        // the process's exit rather than released without the lock.
        Python::try_attach(|_| {
            // SAFETY: the view was filled in by a successful PyObject_GetBuffer and is released
            // exactly once, with the lock held.
            unsafe { ffi::PyBuffer_Release(&mut *self.view) };
        });
    }
}

impl Drop for ByteBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: the view was filled in by a successful PyObject_GetBuffer and is released
        // exactly once; the lifetime `'py` guarantees the interpreter lock is held.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}

fn acquire<'py>(obj: &Bound<'py, PyAny>, flags: std::ffi::c_int) -> PyResult<ByteBuffer<'py>> {
    // The view is boxed so that its address stays put: exporters may keep pointers into it.
    let mut view: Box<MaybeUninit<ffi::Py_buffer>> = Box::new(MaybeUninit::zeroed());
    // SAFETY: `obj` is a live object, the lock is held (`'py`), and `view` has room for a
    // Py_buffer.
    let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
    if rc != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    // SAFETY: PyObject_GetBuffer succeeded, so it initialised the view.
    let view = unsafe { Box::from_raw(Box::into_raw(view).cast::<ffi::Py_buffer>()) };
    Ok(ByteBuffer {
        view,
        _py: PhantomData,
    })
}

fn not_a_buffer(obj: &Bound<'_, PyAny>, what: &str, cause: PyErr) -> PyErr {
    let err = PyTypeError::new_err(format!(
        "{what} must support the buffer protocol (bytes, bytearray, memoryview, numpy array), \
         got {}",
        type_name(obj)
    ));
    err.set_cause(obj.py(), Some(cause));
    err
}

/// The qualified type name of `obj`, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .fully_qualified_name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".to_owned())
}
