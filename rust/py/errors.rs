//! Maps the core's errors onto Python exceptions.
//!
//! The hierarchy lives in `oramstore/errors.py`; built-in exceptions are used where the
//! conventions call for them (`IndexError` for indices, `ValueError` for sizes and buffers,
//! `MemoryError` when the kernel refuses memory).

use pyo3::exceptions::{PyIndexError, PyMemoryError, PyOSError, PyValueError};
use pyo3::PyErr;

use crate::storage::StorageError;

pyo3::import_exception!(oramstore.errors, StorageReleasedError);

impl From<StorageError> for PyErr {
    fn from(err: StorageError) -> PyErr {
        let text = err.to_string();
        match err {
            StorageError::IndexOutOfRange { .. } => PyIndexError::new_err(text),
            StorageError::Released => StorageReleasedError::new_err(text),
            StorageError::Map { .. } => PyMemoryError::new_err(text),
            StorageError::Io(_) => PyOSError::new_err(text),
            StorageError::ZeroCount
            | StorageError::ZeroSize { .. }
            | StorageError::TooLarge { .. }
            | StorageError::DuplicateIndex { .. }
            | StorageError::BufferLength { .. }
            | StorageError::BufferOverlaps { .. }
            | StorageError::RegionTooSmall { .. } => PyValueError::new_err(text),
        }
    }
}
