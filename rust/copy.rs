//! The byte copy under every checkout and checkin.
//!
//! Items are copied between page-aligned segment slots and caller buffers at whatever offset
//! the caller's allocator chose (numpy and malloc hand out addresses 16 bytes past a 64-byte
//! boundary). glibc's `memcpy` moves item-sized blocks with `rep movsb`, which on some CPUs
//! (AMD Zen among them) runs several times slower when the destination sits a few bytes past the
//! source modulo the page size. A plain loop of 32-byte vector moves has no such cliff and is
//! as fast as `memcpy` at its best, so item-sized copies use it; tiny and very large copies,
//! where `memcpy` has no cliff, go to `memcpy`.

/// Copies below this many bytes go straight to `memcpy`.
const VECTOR_MIN: usize = 128;
/// Copies of at least this many bytes (long runs of adjacent items) go to `memcpy`, which
/// switches to non-temporal stores for copies larger than the cache.
const VECTOR_MAX: usize = 64 << 10;

/// Copies `n` bytes from `src` to `dst`.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the two ranges must not
/// overlap.
#[inline]
pub unsafe fn copy_bytes(src: *const u8, dst: *mut u8, n: usize) {
    if !(VECTOR_MIN..VECTOR_MAX).contains(&n) {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the caller's contract, and AVX2 is available.
        unsafe { copy_avx2(src, dst, n) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { copy_chunks(src, dst, n) }
}

/// Portable loop: the compiler turns each 128-byte unaligned move into vector instructions.
///
/// # Safety
///
/// As for [`copy_bytes`].
unsafe fn copy_chunks(src: *const u8, dst: *mut u8, n: usize) {
    const CHUNK: usize = 128;
    let mut i = 0;
    while i + CHUNK <= n {
        // SAFETY: `i + CHUNK <= n`, so both ranges are in bounds; unaligned reads and writes
        // are explicitly allowed.
        unsafe {
            let chunk = src.add(i).cast::<[u8; CHUNK]>().read_unaligned();
            dst.add(i).cast::<[u8; CHUNK]>().write_unaligned(chunk);
        }
        i += CHUNK;
    }
    // SAFETY: the remaining `n - i` bytes are in bounds of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i) };
}

/// # Safety
///
/// As for [`copy_bytes`], and the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_avx2(src: *const u8, dst: *mut u8, n: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};
    const LANE: usize = 32;
    let mut i = 0;
    // Four loads before four stores keep several cache misses in flight.
    while i + 4 * LANE <= n {
        // SAFETY: `i + 128 <= n`, so all eight 32-byte accesses are in bounds; the `loadu` and
        // `storeu` forms accept any alignment.
        unsafe {
            let s = src.add(i).cast::<__m256i>();
            let d = dst.add(i).cast::<__m256i>();
            let a = _mm256_loadu_si256(s);
            let b = _mm256_loadu_si256(s.add(1));
            let c = _mm256_loadu_si256(s.add(2));
            let e = _mm256_loadu_si256(s.add(3));
            _mm256_storeu_si256(d, a);
            _mm256_storeu_si256(d.add(1), b);
            _mm256_storeu_si256(d.add(2), c);
            _mm256_storeu_si256(d.add(3), e);
        }
        i += 4 * LANE;
    }
    // SAFETY: the remaining `n - i` bytes are in bounds of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(copy: unsafe fn(*const u8, *mut u8, usize), src_off: usize, dst_off: usize, n: usize) {
        let src: Vec<u8> = (0..n + 64).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = vec![0xEEu8; n + 128];
        // SAFETY: both offsets leave room for `n` bytes in their vectors.
        unsafe { copy(src.as_ptr().add(src_off), dst.as_mut_ptr().add(dst_off), n) };
        assert_eq!(&dst[dst_off..dst_off + n], &src[src_off..src_off + n]);
        assert!(
            dst[..dst_off].iter().all(|&b| b == 0xEE),
            "wrote before the range"
        );
        assert!(
            dst[dst_off + n..].iter().all(|&b| b == 0xEE),
            "wrote past the range"
        );
    }

    proptest! {
        #[test]
        fn every_kernel_copies_exactly_the_range(
            src_off in 0usize..64, dst_off in 0usize..64, n in 0usize..5000,
        ) {
            check(copy_bytes, src_off, dst_off, n);
            check(copy_chunks, src_off, dst_off, n);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                check(copy_avx2, src_off, dst_off, n);
            }
        }
    }

    #[test]
    fn large_copies_are_exact() {
        for n in [VECTOR_MAX - 1, VECTOR_MAX, 3 * VECTOR_MAX + 17] {
            check(copy_bytes, 5, 33, n);
        }
    }
}
