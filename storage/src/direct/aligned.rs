//! A zeroed, block-aligned byte buffer: direct I/O needs the buffer's address aligned, which `Vec<u8>`
//! cannot promise.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of direct writes (bytes): the largest logical block size of common devices, and a multiple
/// of 512, so right for 512-byte devices too.
pub const BLOCK_BYTES: usize = 4096;

/// A zeroed buffer of a whole number of blocks, aligned to a block.
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, as a Vec<u8> does.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (&self only hands out &[u8]).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BLOCK_BYTES).expect("a block-aligned layout")
    }

    /// A buffer of at least `len` bytes, rounded up to a whole number of blocks.
    pub(super) fn new(len: usize) -> Self {
        let len = len.max(1).next_multiple_of(BLOCK_BYTES);
        // SAFETY: the layout's size is not zero. Zeroed, so every byte is initialized before it is read.
        let ptr = unsafe { alloc::alloc_zeroed(Self::layout(len)) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(Self::layout(len)));
        AlignedBuf { ptr, len }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points at len initialized bytes that self owns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}
