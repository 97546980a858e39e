//! Zeroing map memory a word at a time.

/// Set `v` to all zeros with 4-byte volatile stores. A plain assignment of zeros becomes a
/// `memset` call, which the BPF backend emits as a loop of one-byte stores (64 iterations
/// for the FIB parameters); volatile stores stay as they are written.
///
/// `T` must be aligned to at least 4 and a multiple of 4 long: checked at compile time.
///
/// # Safety
/// All zeros must be a valid `T` (plain data, such as a map value or kernel parameter block).
#[inline(always)]
pub unsafe fn zero<T>(v: &mut T) {
    const {
        assert!(core::mem::align_of::<T>() >= 4 && core::mem::size_of::<T>().is_multiple_of(4));
    }
    let w = v as *mut T as *mut u32;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: i < size/4, the pointer is 4-aligned (checked above), zeros are a valid T.
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
}
