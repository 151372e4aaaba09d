//! Maps the core's errors onto Python exceptions.
//!
//! The hierarchy lives in `oramstore/errors.py`; built-in exceptions are used where the
//! conventions call for them (`IndexError` for indices, `ValueError` for sizes, buffers and
//! storage files that are not valid, `MemoryError` when the kernel refuses memory, `OSError`
//! with its errno, and so the subclass Python picks for it, when the system refuses a file
//! operation).

use std::io;

use pyo3::exceptions::{PyIndexError, PyMemoryError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::IntoPyDict;
use pyo3::PyErr;

use crate::alloc::AllocError;
use crate::file::FileError;
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
            StorageError::Io(err) => io_error(err, text),
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

/// `OSError(errno, message, filename)`, which Python turns into the subclass for the errno
/// (`FileNotFoundError`, `FileExistsError`, ...); a `ValueError` for a file that is not a valid
/// storage file.
fn io_error(err: io::Error, text: String) -> PyErr {
    let code = err.raw_os_error();
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<FileError>())
    {
        Some(FileError::Os { op, path, source }) => match source.raw_os_error() {
            Some(code) => PyOSError::new_err((
                code,
                format!("could not {op} storage file: {}", os_message(code)),
                path.as_os_str().to_owned(),
            )),
            None => PyOSError::new_err(text),
        },
        Some(FileError::BadHeader { .. } | FileError::Mismatch { .. }) => {
            PyValueError::new_err(text)
        }
        None => match code {
            Some(code) => PyOSError::new_err((code, text)),
            None => PyOSError::new_err(text),
        },
    }
}

/// The system's description of an errno, without the "(os error N)" that Rust adds: Python
/// prints the errno itself.
fn os_message(code: i32) -> String {
    let text = io::Error::from_raw_os_error(code).to_string();
    match text.strip_suffix(&format!(" (os error {code})")) {
        Some(message) => message.to_owned(),
        None => text,
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
