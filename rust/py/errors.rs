//! Maps the core's errors onto Python exceptions.
//!
//! The hierarchy lives in `oramstore/errors.py`; built-in exceptions are used where the
//! conventions call for them (`IndexError` for indices, `ValueError` for sizes and buffers,
//! `MemoryError` when the kernel refuses memory).

use pyo3::exceptions::{PyIndexError, PyMemoryError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::IntoPyDict;
use pyo3::PyErr;

use crate::alloc::AllocError;
use crate::storage::StorageError;

pyo3::import_exception!(oramstore.errors, StorageReleasedError);
pyo3::import_exception!(oramstore.errors, RangeInUseError);

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

impl From<AllocError> for PyErr {
    fn from(err: AllocError) -> PyErr {
        let text = err.to_string();
        match err {
            AllocError::Storage(err) => err.into(),
            AllocError::RangeBusy { live, .. } => range_in_use(text, live),
            AllocError::OutOfMemory { .. } | AllocError::Bookkeeping(_) => {
                PyMemoryError::new_err(text)
            }
            AllocError::ZeroSize
            | AllocError::BadAlignment { .. }
            | AllocError::SizeOverflow { .. }
            | AllocError::UnknownAddress { .. }
            | AllocError::NotLive { .. }
            | AllocError::OwnedByBlock { .. }
            | AllocError::UnalignedRange { .. }
            | AllocError::EmptyRange
            | AllocError::RangeOverflow { .. }
            | AllocError::RangeOverlaps { .. }
            | AllocError::UnknownRange { .. }
            | AllocError::NotInserted { .. }
            | AllocError::BadConfig(_) => PyValueError::new_err(text),
        }
    }
}

/// `RangeInUseError(text, live_blocks=live)`, or whatever went wrong building it.
fn range_in_use(text: String, live: usize) -> PyErr {
    Python::attach(|py| {
        let built = [("live_blocks", live)].into_py_dict(py).and_then(|kwargs| {
            py.get_type::<RangeInUseError>()
                .call((text,), Some(&kwargs))
        });
        match built {
            Ok(exc) => PyErr::from_value(exc),
            Err(err) => err,
        }
    })
}
