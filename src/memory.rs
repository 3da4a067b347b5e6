//! The process's memory: the `flat6` binary allocates with mimalloc (see `main.rs`), which keeps
//! freed pages for reuse unless told otherwise.

/// Hand memory that has been freed back to the operating system. The `flat6` binary allocates
/// with mimalloc, which keeps freed pages for reuse; after replacing a large document (a VR's
/// reservations) that would keep the old one's pages resident. Harmless under another global
/// allocator (tests): mimalloc's own heaps are then empty.
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers; it only walks and purges mimalloc's own heaps.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
