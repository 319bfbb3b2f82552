//! Process-wide memory settings for training and embedding, chosen once by the
//! binary at startup (never changed from inside a kernel): [`ReuseLargeBlocks`], a
//! global allocator that keeps large freed blocks for reuse, and
//! [`configure_allocator`], which tunes glibc's `malloc` underneath it.
//!
//! ## Why reuse large blocks
//!
//! A training step allocates the same few hundred activation and gradient buffers
//! every time, many of them tens of MB. glibc returns blocks above its mmap threshold
//! (at most 32 MiB) to the kernel on free, so each step paid page faults, zeroing and
//! TLB shoot-downs for them again (≈10% of a ResNet50 step at 128 px in `perf`).
//! [`ReuseLargeBlocks`] wraps the system allocator: blocks of [`MIN_CACHED`] bytes or
//! more are rounded up to one of eight size classes per power of two (≤ 12.5% slack)
//! and, when freed, parked in a small lock-free table (up to [`MAX_CACHED`] bytes in
//! all) for the next request of the same class. Smaller blocks go straight to the
//! system allocator. The binary installs it (`#[global_allocator]`); nothing else
//! depends on it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Smallest request handled by the cache.
pub const MIN_CACHED: usize = 4 << 20;
/// Most bytes held in freed blocks at any time.
pub const MAX_CACHED: usize = 4 << 30;
/// Alignment of every cached block (any request up to it can reuse one).
const BLOCK_ALIGN: usize = 64;
/// Size classes: 8 per power of two from 4 MiB to 2^(22 + POWERS) bytes.
const POWERS: usize = 18;
const CLASSES: usize = POWERS * 8;
/// Freed blocks kept per class.
const SLOTS: usize = 64;

/// The allocator; see the module docs.
pub struct ReuseLargeBlocks {
    /// `CLASSES × SLOTS` parked block addresses (0 = empty).
    slots: [AtomicUsize; CLASSES * SLOTS],
    cached: AtomicUsize,
}

impl ReuseLargeBlocks {
    /// An empty cache (for a `static`).
    #[must_use]
    // 73 KB of slots: meant for a `static` (the global allocator), where it is no stack
    // array at all; a `const fn` cannot box it.
    #[allow(clippy::large_stack_arrays)]
    pub const fn new() -> Self {
        Self {
            slots: [const { AtomicUsize::new(0) }; CLASSES * SLOTS],
            cached: AtomicUsize::new(0),
        }
    }

    /// Bytes currently parked for reuse.
    pub fn cached_bytes(&self) -> usize {
        self.cached.load(Ordering::Relaxed)
    }
}

impl Drop for ReuseLargeBlocks {
    fn drop(&mut self) {
        for (i, slot) in self.slots.iter().enumerate() {
            let p = slot.swap(0, Ordering::Acquire);
            let size = class_size(i / SLOTS);
            if p != 0
                && let Some(l) = block_layout(size)
            {
                // SAFETY: a parked block, allocated by `System` with its class layout.
                #[allow(unsafe_code)]
                unsafe {
                    System.dealloc(p as *mut u8, l);
                }
            }
        }
    }
}

/// Block size of class `index` (inverse of [`class_of`]).
fn class_size(index: usize) -> usize {
    let (power, sub) = (22 + index / 8, index % 8);
    (1usize << power) + sub * (1usize << (power - 3))
}

impl Default for ReuseLargeBlocks {
    fn default() -> Self {
        Self::new()
    }
}

/// `(class index, class size)` of a request the cache handles, `None` otherwise.
fn class_of(layout: Layout) -> Option<(usize, usize)> {
    let size = layout.size();
    if size < MIN_CACHED || layout.align() > BLOCK_ALIGN {
        return None;
    }
    let power = usize::BITS as usize - 1 - size.leading_zeros() as usize; // floor(log2)
    let step = 1usize << (power - 3);
    let rounded = size.div_ceil(step) * step; // ≤ 2^(power+1)
    let rounded_power = usize::BITS as usize - 1 - rounded.leading_zeros() as usize;
    let sub = if rounded_power > power {
        0
    } else {
        rounded / step - 8
    };
    let index = (rounded_power - 22) * 8 + sub;
    (index < CLASSES).then_some((index, rounded))
}

/// Asks Linux to back the whole 2 MiB pages inside a fresh block with transparent
/// huge pages (`MADV_HUGEPAGE`; a no-op where THP is off or elsewhere): fewer page
/// faults on first touch and fewer TLB misses when GEMMs and elementwise passes
/// stream through tens of MB. Returns `p`.
fn huge_pages(p: *mut u8, size: usize) -> *mut u8 {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        const MADV_HUGEPAGE: i32 = 14;
        #[allow(unsafe_code)]
        unsafe extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        let start = (p as usize).next_multiple_of(HUGE);
        let end = (p as usize + size) / HUGE * HUGE;
        if !p.is_null() && end > start {
            // SAFETY: `[start, end)` lies inside the block just allocated for us;
            // `madvise` with MADV_HUGEPAGE only changes how the kernel backs those
            // pages (contents are unaffected) and its failure is harmless.
            #[allow(unsafe_code)]
            unsafe {
                madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
            }
        }
    }
    let _ = size;
    p
}

/// The layout a class's blocks are allocated with.
fn block_layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size, BLOCK_ALIGN).ok()
}

impl ReuseLargeBlocks {
    /// A parked block of class `index`, if any.
    fn take(&self, index: usize, size: usize) -> *mut u8 {
        for slot in &self.slots[index * SLOTS..(index + 1) * SLOTS] {
            if slot.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let p = slot.swap(0, Ordering::Acquire);
            if p != 0 {
                self.cached.fetch_sub(size, Ordering::Relaxed);
                return p as *mut u8;
            }
        }
        std::ptr::null_mut()
    }

    /// Parks a freed block of class `index`; false when the cache is full.
    fn park(&self, index: usize, size: usize, ptr: *mut u8) -> bool {
        if self.cached.fetch_add(size, Ordering::Relaxed) + size > MAX_CACHED {
            self.cached.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        for slot in &self.slots[index * SLOTS..(index + 1) * SLOTS] {
            if slot
                .compare_exchange(0, ptr as usize, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
        }
        self.cached.fetch_sub(size, Ordering::Relaxed);
        false
    }
}

// SAFETY: every block handed out is either the system allocator's answer for the
// caller's layout, or (for cached classes) a block the system allocator returned for
// the class's size with `BLOCK_ALIGN` ≥ the requested alignment and size ≥ the
// requested size. A parked block is owned by exactly one slot (swapped out
// atomically before reuse) and is only given back to `System` with the layout it was
// allocated with, because `class_of` maps a layout to the same class on `alloc` and
// `dealloc`.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for ReuseLargeBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((index, size)) = class_of(layout) else {
            // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
            return unsafe { System.alloc(layout) };
        };
        let p = self.take(index, size);
        if !p.is_null() {
            return p;
        }
        match block_layout(size) {
            // SAFETY: a valid layout of non-zero size.
            Some(l) => huge_pages(unsafe { System.alloc(l) }, size),
            None => std::ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some((index, size)) = class_of(layout) else {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc_zeroed(layout) };
        };
        let p = self.take(index, size);
        if !p.is_null() {
            // SAFETY: `p` is a parked block of `size` ≥ `layout.size()` bytes that no
            // one else references.
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
            return p;
        }
        match block_layout(size) {
            // SAFETY: a valid layout of non-zero size; fresh memory comes zeroed.
            Some(l) => huge_pages(unsafe { System.alloc_zeroed(l) }, size),
            None => std::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((index, size)) = class_of(layout) else {
            // SAFETY: `ptr` came from `System` with this layout (see `alloc`).
            return unsafe { System.dealloc(ptr, layout) };
        };
        if !self.park(index, size, ptr)
            && let Some(l) = block_layout(size)
        {
            // SAFETY: the block came from `System` with the class layout.
            unsafe { System.dealloc(ptr, l) };
        }
    }
}

/// How [`configure_allocator`] tunes the C library's `malloc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MallocTuning {
    /// Leave the C library's defaults.
    Defaults,
    /// Keep freed memory for reuse: blocks up to 32 MiB come from the heap instead
    /// of fresh `mmap`s, and the heap is not trimmed back after every large free.
    /// Candle allocates a fresh buffer for every op's output and gradient, so
    /// otherwise every activation costs page faults and zeroing on first touch and
    /// TLB shoot-downs on free (≈25% of a ResNet50 step in `perf`); with it a step
    /// ran 1.3× (train) to 1.7× (embed) faster. Purely a speed setting (no effect on
    /// results); the price is a process that keeps the memory it freed.
    KeepFreedMemory,
}

/// Applies `tuning` to glibc's allocator (`mallopt`), once per process: the first
/// call decides, later calls do nothing. Skipped when any `MALLOC_*` tunable is set in
/// the environment (the user's choice wins), and a no-op off glibc. Returns whether
/// this call changed a setting.
pub fn configure_allocator(tuning: MallocTuning) -> bool {
    static DONE: std::sync::Once = std::sync::Once::new();
    let mut changed = false;
    DONE.call_once(|| {
        let user_set = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
        changed = tuning == MallocTuning::KeepFreedMemory && !user_set && keep_freed_memory();
    });
    changed
}

/// [`MallocTuning::KeepFreedMemory`] on glibc; whether it was applied.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() -> bool {
    // glibc's `mallopt` parameters (malloc.h).
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_THRESHOLD: i32 = -3;
    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: `mallopt` only changes allocator tunables; glibc documents it as
    // callable at any time, and these values are within its accepted ranges (mmap
    // threshold ≤ 32 MiB on 64-bit).
    #[allow(unsafe_code)]
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_TOP_PAD, 256 << 20);
    }
    true
}

/// No `mallopt` off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_an_eighth_and_are_stable() {
        assert_eq!(
            class_of(Layout::from_size_align(MIN_CACHED - 1, 4).expect("l")),
            None
        );
        assert_eq!(
            class_of(Layout::from_size_align(MIN_CACHED, 4096).expect("l")),
            None
        );
        let mut last = 0;
        for size in (MIN_CACHED..1 << 31).step_by(999_983) {
            let layout = Layout::from_size_align(size, 4).expect("layout");
            let (index, rounded) = class_of(layout).expect("cached");
            assert!(
                rounded >= size && rounded - size <= size / 8,
                "{size} → {rounded}"
            );
            assert!(index >= last, "classes grow with size");
            last = index;
            assert_eq!(class_size(index), rounded);
            // Every size of the class maps to the same class and block size.
            let again = class_of(Layout::from_size_align(rounded, 8).expect("l"));
            assert_eq!(again, Some((index, rounded)));
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn freed_blocks_are_reused_zeroed_on_request_and_capped() {
        let a = ReuseLargeBlocks::new();
        let layout = Layout::from_size_align(5 << 20, 4).expect("layout");
        // SAFETY: plain allocate / write / free cycles with matching layouts.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(7, layout.size());
            a.dealloc(p, layout);
            assert!(a.cached_bytes() >= layout.size());
            let q = a.alloc_zeroed(layout);
            assert_eq!(q, p, "the parked block is reused");
            assert_eq!(a.cached_bytes(), 0);
            assert!(
                std::slice::from_raw_parts(q, layout.size())
                    .iter()
                    .all(|&b| b == 0)
            );
            a.dealloc(q, layout);
            // Small blocks are never parked.
            let small = Layout::from_size_align(1024, 8).expect("layout");
            let s = a.alloc(small);
            a.dealloc(s, small);
            assert!(a.cached_bytes() <= 6 << 20);
            let q = a.alloc(layout);
            a.dealloc(q, layout);
        }
        // More blocks of one class than there are slots: the rest go back.
        let blocks: Vec<*mut u8> = (0..SLOTS + 3)
            // SAFETY: as above.
            .map(|_| unsafe { a.alloc(layout) })
            .collect();
        for &b in &blocks {
            // SAFETY: each block was allocated above with `layout`.
            unsafe { a.dealloc(b, layout) };
        }
        let (_, class_size) = class_of(layout).expect("class");
        assert_eq!(a.cached_bytes(), SLOTS * class_size);
    }
}
