//! Registers as the image stores them: the kernel's `user_regs_struct`
//! (NT_PRSTATUS) as raw bytes, so the format does not depend on how libc
//! spells the struct, and a decoder that checks the length.

/// x86-64 general registers.
pub type Regs = libc::user_regs_struct;

pub fn regs_to_bytes(r: &Regs) -> Vec<u8> {
    // SAFETY: Regs is plain data (u64 fields, no padding); reading its bytes
    // for its size is valid.
    unsafe {
        std::slice::from_raw_parts(r as *const Regs as *const u8, std::mem::size_of::<Regs>())
    }
    .to_vec()
}

/// `None` unless `b` is exactly one `user_regs_struct`.
pub fn regs_from_bytes(b: &[u8]) -> Option<Regs> {
    if b.len() != std::mem::size_of::<Regs>() {
        return None;
    }
    // SAFETY: any bit pattern is a valid Regs; the length was checked.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const Regs) })
}
