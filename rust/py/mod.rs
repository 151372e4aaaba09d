//! Thin PyO3 wrappers: type conversion, error mapping and releasing the interpreter lock
//! around copies. No logic of their own lives here.

pub mod alloc;
pub mod arrays;
pub mod buffer;
pub mod errors;
pub mod indices;
pub mod logging;
pub mod storage;
