//! oramstore's native core: untrusted block storage, its C ABI, and the Python bindings.
//!
//! The modules `alloc`, `segment`, `storage` and `ocall` use no Python and are tested by
//! `cargo test` alone; `py` wraps them for the `oramstore._native` extension module when the
//! `python` feature is on.

pub mod alloc;
pub mod copy;
pub mod file;
pub mod ocall;
pub mod segment;
pub mod storage;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _native(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    py::logging::install(m.py())?;
    m.add_class::<py::storage::PyUntrustedStorage>()?;
    m.add_class::<py::alloc::PyUntrustedAllocator>()?;
    m.add_class::<py::alloc::PyAllocation>()?;
    m.add_class::<py::alloc::PyRangeHandle>()?;
    m.add_class::<py::alloc::PyAddressInfo>()?;
    m.add_class::<py::alloc::PyRangeStats>()?;
    m.add_class::<py::alloc::PyAllocatorStats>()?;
    m.add_function(wrap_pyfunction!(py::storage::allocated_bytes, m)?)?;
    Ok(())
}
