//! `BPF_MAP_UPDATE_BATCH` for u32 arrays (aya 0.14 has no batch operations): a whole ring
//! change in one syscall instead of one per slot, which is what keeps the time from a
//! health verdict to the dataplane short.

use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// A zeroed `union bpf_attr` prefix (the kernel zero-fills the rest).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn get_u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
}

/// Write `values[i]` at `keys[i]` of the u32 array map `fd`, in one syscall.
pub fn update_u32(fd: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut a = Attr([0; 128]);
    // batch: { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 }
    a.put_u64(16, keys.as_ptr() as u64);
    a.put_u64(24, values.as_ptr() as u64);
    a.put_u32(32, keys.len() as u32);
    a.put_u32(36, fd.as_raw_fd() as u32);
    // SAFETY: `a` is a valid, writable bpf_attr prefix of the size passed; keys and values
    // outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut a as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let done = a.get_u32(32) as usize;
    if done != keys.len() {
        return Err(std::io::Error::other(format!(
            "BPF_MAP_UPDATE_BATCH wrote {done} of {} slots",
            keys.len()
        )));
    }
    Ok(())
}
