//! oramstore's native core: untrusted block storage, its C ABI, and the Python bindings.
//!
//! The modules `segment`, `storage` and `ocall` use no Python; `py` wraps them for the
//! `oramstore._native` extension module when the `python` feature is on.

pub mod ocall;
pub mod segment;
pub mod storage;
