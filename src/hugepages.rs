//! Transparent huge pages for the heap's large tables.
//!
//! A heap of millions of objects fills its object table a 4 KiB page at
//! a time, and every first touch of a page is a fault: reading a 10 MB
//! source makes about 150 MB of tables, some 37,000 faults, a third of
//! the time on a virtual machine. Tables past 16 MiB are advised to
//! the kernel as huge-page candidates (2 MiB pages: one fault for 512),
//! which also spares the collector's walks over them TLB misses. Small
//! heaps, and so start-up, are untouched. Where transparent huge pages
//! are off (or `never`), the advice does nothing.

/// The huge-page size of x86-64 and of most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Tables smaller than this are left to 4 KiB pages: a huge page is
/// zeroed and counted whole however little of it is used, and a program
/// of a few hundred thousand objects gained nothing measurable from them
/// (the `lists` benchmark: 4.7 MB more peak RSS, no faster).
const MIN_TABLE: usize = 16 << 20;

/// Advises the kernel that the allocation behind `v` may be backed by
/// huge pages, when it is at least `MIN_TABLE` bytes.
pub fn advise<T>(v: &Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < MIN_TABLE {
        return;
    }
    let start = v.as_ptr() as usize;
    let from = start.next_multiple_of(HUGE_PAGE);
    let to = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if to > from {
        advise_range(from, to - from);
    }
}

#[cfg(target_os = "linux")]
fn advise_range(addr: usize, len: usize) {
    // SAFETY: `madvise(MADV_HUGEPAGE)` neither reads, writes nor unmaps
    // memory: it marks the range as one the kernel may back with huge
    // pages, and the kernel keeps the contents of a private anonymous
    // mapping (what the allocator hands out for allocations this large)
    // when it does. The range lies inside the vector's own allocation
    // (`from >= start`, `to <= start + bytes`) and is page-aligned, as
    // `madvise` requires. Its result is ignored on purpose: a kernel
    // without transparent huge pages refuses the advice, and the table
    // works the same with 4 KiB pages.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_addr: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advising_keeps_contents_and_small_tables_alone() {
        let small: Vec<u64> = (0..1000).collect();
        advise(&small);
        assert_eq!(small.iter().sum::<u64>(), 999 * 1000 / 2);
        let mut large: Vec<u64> = Vec::with_capacity(MIN_TABLE / 8);
        large.extend(0..1_000_000u64);
        advise(&large);
        large.extend(1_000_000..2_000_000u64);
        assert_eq!(large.iter().sum::<u64>(), 1_999_999 * 2_000_000 / 2);
    }
}
