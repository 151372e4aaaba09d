//! Asymmetric fences between the lock-free publish path and range removal.
//!
//! Handing out a cached block writes its tag and then reads its range's `retired` flag;
//! removal writes the flag and then reads the tags. Each side needs a full fence between its
//! write and its read, or both reads could miss the other side's write. Removal is rare and the
//! publish path is the hottest code of the allocator, so on Linux the cost is moved entirely to
//! removal: the publish side only stops the compiler from reordering, and removal issues
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every running thread of the
//! process execute a full fence before it returns. Where that is unavailable, both sides use an
//! ordinary sequentially consistent fence.

use std::sync::atomic::{compiler_fence, fence, Ordering};
use std::sync::OnceLock;

#[cfg(target_os = "linux")]
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
#[cfg(target_os = "linux")]
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

static ASYMMETRIC: OnceLock<bool> = OnceLock::new();

/// Whether the heavy side is a process-wide barrier (and the light side may be a compiler
/// fence). Registers the process on the first call; the answer never changes afterwards.
pub(crate) fn asymmetric() -> bool {
    *ASYMMETRIC.get_or_init(register)
}

#[cfg(target_os = "linux")]
fn register() -> bool {
    // SAFETY: membarrier takes only integer arguments and reads or writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
            0,
        )
    };
    if rc != 0 {
        log::debug!(
            target: "oramstore",
            "membarrier is unavailable ({}); thread caches use full fences",
            std::io::Error::last_os_error()
        );
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn register() -> bool {
    false
}

/// The frequent side. `asymmetric` must be the value of [`asymmetric()`].
#[inline(always)]
pub(crate) fn light(asymmetric: bool) {
    if asymmetric {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The rare side. Returns false if the barrier could not be issued, in which case the caller
/// must not rely on having seen the light side's writes.
pub(crate) fn heavy() -> bool {
    if !asymmetric() {
        fence(Ordering::SeqCst);
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as in `register`; the process registered for this command.
        let rc =
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    unreachable!("asymmetric fences are only registered on Linux")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_fence_works_whichever_kind_is_available() {
        let asym = asymmetric();
        assert_eq!(asymmetric(), asym);
        light(asym);
        assert!(heavy());
    }
}
