//! Allocation of numpy output arrays.

use numpy::npyffi::{self, NpyTypes, PY_ARRAY_API};
use numpy::{Element, PyArray2, PyArrayDescrMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A new, uninitialised C-ordered `uint8` array of shape `(rows, cols)`.
///
/// Unlike `PyArray2::new`, a refused allocation raises `MemoryError` (or `ValueError` for a
/// shape too large to describe) instead of panicking.
pub fn empty_u8(py: Python<'_>, rows: usize, cols: usize) -> PyResult<Bound<'_, PyArray2<u8>>> {
    let too_big =
        || PyValueError::new_err(format!("an array of {rows} x {cols} bytes is too large"));
    let r = npyffi::npy_intp::try_from(rows).map_err(|_| too_big())?;
    let c = npyffi::npy_intp::try_from(cols).map_err(|_| too_big())?;
    r.checked_mul(c).ok_or_else(too_big)?;
    let mut dims = [r, c];
    // SAFETY: the numpy C API is initialised by PY_ARRAY_API's first use; the descriptor
    // reference is stolen by PyArray_NewFromDescr as its contract says; `dims` outlives the
    // call; null strides and data ask numpy for a fresh C-ordered buffer.
    unsafe {
        let ptr = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            npyffi::get_type_object(py, NpyTypes::PyArray_Type),
            u8::get_dtype(py).into_dtype_ptr(),
            2,
            dims.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}
