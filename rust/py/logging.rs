//! Forwards the core's `log` records to Python's `logging`, under the record's target
//! (`oramstore`).
//!
//! Records arrive from calls that have released the interpreter lock, from threads Python never
//! started and from finalisers, some of which run while an exception propagates. Whatever
//! Python's logging does with a record (a filter or handler that raises, a logger that cannot
//! be looked up), the call that logged goes on as if it had logged nothing: the exception is
//! reported through `sys.unraisablehook` and never left set, where it would turn the call's
//! result into a `SystemError` or replace the exception that was propagating.

use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The most detailed level forwarded. Python's logging filters further by its own levels.
const MAX_LEVEL: LevelFilter = LevelFilter::Debug;

struct PythonLogger {
    /// `logging.getLogger`, looked up once.
    get_logger: Py<PyAny>,
}

static LOGGER: OnceLock<PythonLogger> = OnceLock::new();

/// Installs the bridge as the process's `log` logger, unless a logger is installed already.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let get_logger = py.import("logging")?.getattr("getLogger")?.unbind();
    let logger = LOGGER.get_or_init(|| PythonLogger { get_logger });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(MAX_LEVEL);
    }
    Ok(())
}

/// Python's number for a level.
fn python_level(level: Level) -> u32 {
    match level {
        Level::Error => 40,
        Level::Warn => 30,
        Level::Info => 20,
        Level::Debug => 10,
        Level::Trace => 5,
    }
}

impl PythonLogger {
    /// Hands one record to the Python logger `name`; an exception raised on the way is
    /// reported and cleared before returning.
    fn forward(&self, py: Python<'_>, name: &str, record: &Record<'_>, message: String) {
        let logger = match self.get_logger.bind(py).call1((name,)) {
            Ok(logger) => logger,
            Err(err) => {
                err.write_unraisable(py, None);
                return;
            }
        };
        let level = python_level(record.level());
        // `Logger.handle` applies filters but not the level, which the caller is expected to
        // have checked, as `Logger.log` does.
        let handled = logger
            .call_method1("isEnabledFor", (level,))
            .and_then(|enabled| enabled.is_truthy())
            .and_then(|enabled| {
                if !enabled {
                    return Ok(());
                }
                let record = logger.call_method1(
                    "makeRecord",
                    (
                        name,
                        level,
                        record.file().unwrap_or("<rust>"),
                        record.line().unwrap_or(0),
                        message,
                        PyTuple::empty(py),
                        py.None(),
                    ),
                )?;
                logger.call_method1("handle", (record,)).map(drop)
            });
        if let Err(err) = handled {
            err.write_unraisable(py, Some(&logger));
        }
    }
}

impl Log for PythonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= MAX_LEVEL
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Formatting needs no interpreter, so it happens before attaching.
        let message = record.args().to_string();
        let name = record.target().replace("::", ".");
        // Attaching works whether or not this thread holds the interpreter lock: inside
        // `Python::detach` it takes the lock back for the duration of the call. While the
        // interpreter shuts down nothing is forwarded.
        Python::try_attach(|py| {
            let _pending = PendingError::set_aside(py);
            self.forward(py, &name, record, message);
        });
    }

    fn flush(&self) {}
}

/// An exception that was already set on this thread when a record arrived, kept aside
/// untouched while Python's logging runs and set again when dropped. It is never interpreted,
/// so a `PanicException` kept aside is not resumed as a panic here.
struct PendingError<'py> {
    _py: Python<'py>,
    parts: [*mut ffi::PyObject; 3],
}

impl<'py> PendingError<'py> {
    fn set_aside(py: Python<'py>) -> Self {
        let [mut kind, mut value, mut traceback] = [std::ptr::null_mut(); 3];
        // SAFETY: the thread is attached (`py`) and the three pointers are valid for writes.
        // The references they receive belong to `PendingError` until it is dropped.
        unsafe { ffi::PyErr_Fetch(&mut kind, &mut value, &mut traceback) };
        PendingError {
            _py: py,
            parts: [kind, value, traceback],
        }
    }
}

impl Drop for PendingError<'_> {
    fn drop(&mut self) {
        let [kind, value, traceback] = self.parts;
        // SAFETY: the thread is still attached (the guard cannot outlive `'py`), and the
        // references came from `PyErr_Fetch` and are handed back exactly once. With no
        // exception kept aside all three are null, and this clears the indicator, which
        // `forward` has left clear already.
        unsafe { ffi::PyErr_Restore(kind, value, traceback) };
    }
}
