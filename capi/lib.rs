//! oramstore's OCALL interface as a C library: `liboramstore.so` and `liboramstore.a`, declared
//! by `include/oramstore.h`.
//!
//! The functions live in the core crate (`rust/ocall.rs`), where `#[no_mangle]` gives them their
//! C names; this crate only links them, without the Python bindings, into libraries of their
//! own. The Python extension exports the same functions.

#![forbid(unsafe_code)]

pub use oramstore_core::ocall::{
    allocate_oram_storage, checkin_oram_storage, checkout_oram_storage, oram_storage_last_error,
    oram_storage_last_error_message, release_oram_storage, OcallError,
};
