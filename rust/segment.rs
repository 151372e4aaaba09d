//! Lazily mapped memory regions.
//!
//! A [`Segment`] is a run of bytes that a storage keeps its items in. By default it is an
//! anonymous private mapping made with `MAP_NORESERVE`: the kernel hands out zero-filled pages
//! only when they are first touched, so creating a multi-GiB segment costs one system call and
//! no physical memory. A segment can also sit in memory that came from somewhere else (an
//! allocator's block, a device buffer); then an owner object keeps that memory alive.

use std::io;
use std::ptr::NonNull;

use memmap2::{MmapMut, MmapOptions};

/// Memory that a segment may be placed in instead of an anonymous mapping.
///
/// # Safety
///
/// Implementors promise that `as_ptr()..as_ptr() + len()` stays valid for reads and writes,
/// and is not handed out to anyone else, for as long as the value lives.
pub unsafe trait Region: Send + Sync {
    /// The first byte of the region.
    fn as_ptr(&self) -> NonNull<u8>;
    /// The length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What owns a segment's memory. The values are held only for their `Drop`, which unmaps the
/// mapping or gives the region back.
#[expect(dead_code, reason = "fields are held for their Drop")]
enum Backing {
    Mapped(MmapMut),
    Region(Box<dyn Region>),
}

/// A contiguous, writable run of untrusted memory.
pub struct Segment {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: the segment exclusively owns its memory (a private mapping, or a region whose
// implementor promised exclusivity). Shared access through `&Segment` only hands out raw
// pointers; the storage above serialises writes with a lock.
unsafe impl Send for Segment {}
// SAFETY: see `Send` above; no interior state besides the memory itself.
unsafe impl Sync for Segment {}

impl Segment {
    /// Maps `len` bytes of anonymous memory without reserving swap or touching any page.
    ///
    /// Every byte reads as zero until it is written.
    pub fn map_anonymous(len: usize) -> io::Result<Segment> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty segment",
            ));
        }
        let mut map = MmapOptions::new().len(len).no_reserve_swap().map_anon()?;
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Segment {
            ptr,
            len,
            backing: Backing::Mapped(map),
        })
    }

    /// Places a segment in memory provided by `region`, which the segment keeps alive.
    ///
    /// Unlike an anonymous mapping, the region's bytes may hold anything at first.
    pub fn from_region(region: Box<dyn Region>) -> Segment {
        Segment {
            ptr: region.as_ptr(),
            len: region.len(),
            backing: Backing::Region(region),
        }
    }

    /// Whether the memory came from an anonymous mapping (and so read zero when fresh).
    pub fn is_anonymous(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    /// The first byte of the segment.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length of the segment in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty (never true for a constructed segment).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[ptr, ptr + len)` shares at least one byte with this segment.
    pub fn overlaps(&self, ptr: *const u8, len: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        let end = start + self.len;
        let other = ptr as usize;
        len != 0 && other < end && start < other.saturating_add(len)
    }

    /// Sets every byte of the segment to zero.
    ///
    /// Touches every page; used once when a segment is placed in memory that may be dirty.
    pub fn zero(&mut self) {
        // SAFETY: `ptr..ptr+len` is valid for writes (mapping or `Region` contract) and `&mut
        // self` excludes every other access.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), 0, self.len) };
    }

    /// Bytes of the segment that are resident in physical memory, as the kernel reports them.
    pub fn resident_bytes(&self) -> io::Result<usize> {
        resident_bytes(self.ptr.as_ptr(), self.len)
    }

    /// Which backing this segment has, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self.backing {
            Backing::Mapped(_) => "anonymous mapping",
            Backing::Region(_) => "region",
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("kind", &self.kind())
            .finish()
    }
}

/// The size of a virtual memory page.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size <= 0 {
        4096
    } else {
        size as usize
    }
}

/// Counts the bytes of the pages overlapping `[ptr, ptr + len)` that are resident, using
/// `mincore`. The range must lie in mapped memory.
pub fn resident_bytes(ptr: *const u8, len: usize) -> io::Result<usize> {
    if len == 0 {
        return Ok(0);
    }
    let page = page_size();
    let start = (ptr as usize) & !(page - 1);
    let end = (ptr as usize)
        .checked_add(len)
        .and_then(|e| e.checked_add(page - 1))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?
        & !(page - 1);
    // Ask in windows so that the vector stays small even for terabyte-sized mappings.
    const WINDOW_PAGES: usize = 1 << 16;
    let mut vec = vec![0u8; WINDOW_PAGES.min((end - start) / page)];
    let mut resident_pages = 0usize;
    let mut at = start;
    while at < end {
        let pages = ((end - at) / page).min(WINDOW_PAGES);
        // SAFETY: `at` is page aligned, `at..at + pages*page` lies within the caller's mapped
        // range, and `vec` has room for one byte per page.
        let rc = unsafe { libc::mincore(at as *mut libc::c_void, pages * page, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        resident_pages += vec[..pages].iter().filter(|&&b| b & 1 != 0).count();
        at += pages * page;
    }
    Ok(resident_pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_mapping_reads_zero_and_is_not_resident() {
        let seg = Segment::map_anonymous(64 << 20).unwrap();
        assert!(seg.is_anonymous());
        assert_eq!(seg.len(), 64 << 20);
        assert_eq!(seg.resident_bytes().unwrap(), 0);
        // SAFETY: within the segment, which nothing else uses.
        let byte = unsafe { *seg.as_ptr().add(12345) };
        assert_eq!(byte, 0);
    }

    #[test]
    fn residency_grows_with_writes_only() {
        let seg = Segment::map_anonymous(16 << 20).unwrap();
        let page = page_size();
        for i in 0..10 {
            // SAFETY: `i * 3 * page` is within the 16 MiB segment.
            unsafe { *seg.as_ptr().add(i * 3 * page) = 1 };
        }
        assert_eq!(seg.resident_bytes().unwrap(), 10 * page);
    }

    #[test]
    fn empty_mapping_is_refused() {
        assert!(Segment::map_anonymous(0).is_err());
    }

    #[test]
    fn huge_mapping_is_refused_not_crashing() {
        assert!(Segment::map_anonymous(usize::MAX - 4095).is_err());
    }

    #[test]
    fn overlap_is_detected_on_both_edges() {
        let seg = Segment::map_anonymous(8192).unwrap();
        let p = seg.as_ptr();
        assert!(seg.overlaps(p, 1));
        // SAFETY: pointer arithmetic only; nothing is dereferenced.
        let after = unsafe { p.add(8192) };
        assert!(!seg.overlaps(after, 100));
        assert!(seg.overlaps(p.wrapping_sub(10), 11));
        assert!(!seg.overlaps(p.wrapping_sub(10), 10));
        assert!(!seg.overlaps(p, 0));
    }

    struct Boxed(Box<[u8]>);
    // SAFETY: the boxed slice is owned and valid for its whole length.
    unsafe impl Region for Boxed {
        fn as_ptr(&self) -> NonNull<u8> {
            NonNull::new(self.0.as_ptr() as *mut u8).unwrap()
        }
        fn len(&self) -> usize {
            self.0.len()
        }
    }

    #[test]
    fn region_segment_can_be_zeroed() {
        let mut seg = Segment::from_region(Box::new(Boxed(vec![0xAB; 100].into_boxed_slice())));
        assert!(!seg.is_anonymous());
        seg.zero();
        // SAFETY: within the 100-byte region.
        assert_eq!(unsafe { *seg.as_ptr().add(99) }, 0);
    }
}
