//! The process's allocator: glibc's malloc for small blocks, a mapping of its own for each large
//! one, asked to be backed by huge pages.
//!
//! An image job allocates a few blocks of 10-50 MB (decoded pixels, coefficients, libwebp's
//! planes) and frees them a fraction of a second later. Giving such blocks back to the kernel at
//! once is what keeps peak RSS bounded (`memory::tune_allocator` has the history), but each one
//! is then faulted in afresh by the next image, 4 KiB at a time: on a 12 MP PNG bound to a box,
//! 80,000 page faults and about a sixth of the job's time in the kernel. The same mappings with
//! `MADV_HUGEPAGE` take 2 MiB a fault (10,000 faults, measured 136 → 110 ms on that job) and
//! are still returned on free. Where transparent huge pages are off (`never`) the advice is
//! ignored and nothing else changes; under `always` it is what the kernel does anyway. Only
//! the 2 MiB-aligned stretches of a mapping can be huge pages, and `mmap` does not promise that
//! alignment: mapping 2 MiB more and trimming to an aligned start was measured (fewer faults
//! still, times within noise, up to 3 MB more RSS) and left out.
//!
//! Blocks of at least [`LARGE`] bytes get their own `mmap`, freed by `munmap` and grown by
//! `mremap`, the way glibc treats blocks above its mmap threshold; the size in the layout,
//! which Rust hands back unchanged on free and realloc, says which kind a block is.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on are mapped on their own (glibc's threshold as the service sets it).
pub const LARGE: usize = 1 << 20;

/// Where huge pages are worth asking for: one 2 MiB page.
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

/// Alignment a fresh mapping always has (the smallest page size of any target we build for).
const PAGE_ALIGN: usize = 4096;

/// glibc for small blocks, `mmap` with `MADV_HUGEPAGE` for large ones (Linux; elsewhere the
/// system allocator for everything).
pub struct LargeBlocks;

#[inline]
fn mapped(layout: &Layout) -> bool {
    cfg!(target_os = "linux") && layout.size() >= LARGE && layout.align() <= PAGE_ALIGN
}

#[cfg(target_os = "linux")]
unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    advise_huge(p, size);
    p.cast()
}

#[cfg(target_os = "linux")]
fn advise_huge(p: *mut libc::c_void, size: usize) {
    if size >= HUGE {
        // SAFETY: advice on a mapping we own; a refusal (THP not built in) changes nothing.
        unsafe { libc::madvise(p, size, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
unsafe fn map(_size: usize) -> *mut u8 {
    unreachable!("large blocks are mapped on Linux only")
}

#[cfg(target_os = "linux")]
unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: `p` and `size` are a mapping made by `map` or `remap` (the caller's layout).
    unsafe { libc::munmap(p.cast(), size) };
}

#[cfg(not(target_os = "linux"))]
unsafe fn unmap(_p: *mut u8, _size: usize) {
    unreachable!("large blocks are mapped on Linux only")
}

#[cfg(target_os = "linux")]
unsafe fn remap(p: *mut u8, old: usize, new: usize) -> *mut u8 {
    // SAFETY: `p`/`old` is a mapping of ours; MREMAP_MAYMOVE keeps its contents.
    let q = unsafe { libc::mremap(p.cast(), old, new, libc::MREMAP_MAYMOVE) };
    if q == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    advise_huge(q, new);
    q.cast()
}

#[cfg(not(target_os = "linux"))]
unsafe fn remap(_p: *mut u8, _old: usize, _new: usize) -> *mut u8 {
    unreachable!("large blocks are mapped on Linux only")
}

// SAFETY: every block is either System's (small layouts, both ways) or a mapping of its own
// (large layouts), decided by the layout alone, which the caller passes back unchanged.
unsafe impl GlobalAlloc for LargeBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // A fresh anonymous mapping reads as zeros: nothing to clear.
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(&layout) {
            unsafe { unmap(ptr, layout.size()) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(&layout), mapped(&new_layout)) {
            (true, true) => unsafe { remap(ptr, layout.size(), new_size) },
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // Crossing the threshold: a new block of the other kind, the contents copied over.
            _ => {
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    let n = layout.size().min(new_size);
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, n);
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The first two tests allocate through `LargeBlocks` directly, whatever allocator the test
    // binary runs with; the third goes through the global one, which is `LargeBlocks` too.

    fn check(p: *mut u8, n: usize, byte: u8) {
        assert!(!p.is_null());
        let s = unsafe { std::slice::from_raw_parts(p, n) };
        assert!(s.iter().all(|&b| b == byte), "contents lost");
    }

    #[test]
    fn blocks_of_both_kinds_keep_their_contents_across_every_realloc() {
        let a = LargeBlocks;
        // Small to small, small to large, large to larger (remapped), large to small, and
        // across the threshold by one byte each way.
        let sizes = [
            100,
            4000,
            LARGE,
            3 * LARGE + 123,
            5000,
            LARGE - 1,
            LARGE + 1,
        ];
        let layout = Layout::from_size_align(sizes[0], 8).unwrap();
        unsafe {
            let mut p = a.alloc(layout);
            std::ptr::write_bytes(p, 0xA5, sizes[0]);
            let mut cur = layout;
            for &n in &sizes[1..] {
                let keep = cur.size().min(n);
                p = a.realloc(p, cur, n);
                check(p, keep, 0xA5);
                std::ptr::write_bytes(p, 0xA5, n);
                cur = Layout::from_size_align(n, 8).unwrap();
            }
            a.dealloc(p, cur);
        }
    }

    #[test]
    fn large_zeroed_blocks_read_as_zeros_and_stricter_alignments_are_kept() {
        let a = LargeBlocks;
        unsafe {
            let l = Layout::from_size_align(8 * LARGE, 64).unwrap();
            let p = a.alloc_zeroed(l);
            check(p, l.size(), 0);
            a.dealloc(p, l);
            // An alignment above a page goes to the system allocator, which honours it.
            let l = Layout::from_size_align(2 * LARGE, 1 << 16).unwrap();
            let p = a.alloc(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % (1 << 16), 0);
            a.dealloc(p, l);
        }
    }

    #[test]
    fn a_vec_grown_past_the_threshold_and_shrunk_keeps_its_elements() {
        // The global allocator is `LargeBlocks` (lib.rs): an ordinary Vec goes through every
        // path.
        let mut v: Vec<u32> = Vec::new();
        for i in 0..(LARGE as u32) {
            v.push(i);
        }
        v.truncate(1000);
        v.shrink_to_fit();
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
        let z = vec![0u64; LARGE];
        assert!(z.iter().all(|&x| x == 0));
    }
}
