//! Conversion of index arguments: any sequence of ints, or a one-dimensional numpy integer array.

use numpy::{PyArray1, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::buffer::type_name;

/// Reads `obj` as a list of indices, rejecting negative ones with `IndexError` and anything that
/// is not an integer with `TypeError`.
pub fn indices_from(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return from_array(array);
    }
    // Lists and tuples are read without the iterator protocol: it is the common case and the
    // difference shows on short batches.
    if let Ok(list) = obj.cast::<PyList>() {
        return list
            .iter()
            .enumerate()
            .map(|(k, item)| from_item(&item, k))
            .collect();
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return tuple
            .iter()
            .enumerate()
            .map(|(k, item)| from_item(&item, k))
            .collect();
    }
    if obj.is_instance_of::<pyo3::types::PyString>() || obj.is_instance_of::<pyo3::types::PyBytes>()
    {
        return Err(not_indices(obj));
    }
    let iter = obj.try_iter().map_err(|_| not_indices(obj))?;
    iter.enumerate()
        .map(|(k, item)| from_item(&item?, k))
        .collect()
}

fn not_indices(obj: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "indices must be a sequence of ints or a 1-D numpy integer array, got {}",
        type_name(obj)
    ))
}

fn from_item(item: &Bound<'_, PyAny>, position: usize) -> PyResult<u64> {
    match item.extract::<u64>() {
        Ok(index) => Ok(index),
        Err(err) if err.is_instance_of::<PyOverflowError>(item.py()) => {
            // An int that does not fit u64: negative, or beyond any storage.
            let negative = item.lt(0).unwrap_or(false);
            Err(PyIndexError::new_err(if negative {
                format!("index {item} (position {position}) is negative")
            } else {
                format!("index {item} (position {position}) is out of range")
            }))
        }
        Err(_) => Err(PyTypeError::new_err(format!(
            "indices must be integers, got {} at position {position}",
            type_name(item)
        ))),
    }
}

fn from_array(array: &Bound<'_, PyUntypedArray>) -> PyResult<Vec<u64>> {
    if array.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "an index array must be one-dimensional, got {} dimensions",
            array.ndim()
        )));
    }
    let dtype = array.dtype();
    let kind = dtype.kind();
    if kind != b'i' && kind != b'u' {
        return Err(PyTypeError::new_err(format!(
            "an index array must have an integer dtype, got {}",
            dtype.str()?
        )));
    }
    if kind == b'u' {
        let unsigned = native::<u64>(array, "uint64")?;
        return Ok(unsigned.readonly().as_array().to_vec());
    }
    let signed = native::<i64>(array, "int64")?;
    let signed = signed.readonly();
    let view = signed.as_array();
    view.iter()
        .enumerate()
        .map(|(position, &index)| {
            u64::try_from(index).map_err(|_| {
                PyIndexError::new_err(format!("index {index} (position {position}) is negative"))
            })
        })
        .collect()
}

/// The array itself if its dtype is already native `T`, else a converted copy. Every unsigned
/// dtype fits `uint64` and every signed one `int64`, so the conversion loses nothing.
fn native<'py, T: numpy::Element>(
    array: &Bound<'py, PyUntypedArray>,
    dtype: &str,
) -> PyResult<Bound<'py, PyArray1<T>>> {
    match array.cast::<PyArray1<T>>() {
        Ok(same) => Ok(same.clone()),
        Err(_) => Ok(array
            .call_method1("astype", (dtype,))?
            .cast_into::<PyArray1<T>>()?),
    }
}
