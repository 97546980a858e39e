//! The baseline for ring writes: a plain `BPF_MAP_TYPE_ARRAY` of u32 like `LB_RINGS`,
//! written with one `BPF_MAP_UPDATE_BATCH` call (the kernel's cheapest way to write many
//! elements), through the raw bpf(2) syscall since aya 0.14 has no batch operations.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::Result;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// A zeroed `union bpf_attr` prefix (the kernel zero-fills the rest).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable bpf_attr prefix of the size we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An array map of `entries` u32 slots.
pub struct U32Array {
    fd: OwnedFd,
}

impl U32Array {
    pub fn new(entries: u32) -> Result<Self> {
        let mut a = Attr::new();
        a.put_u32(0, BPF_MAP_TYPE_ARRAY);
        a.put_u32(4, 4); // key_size
        a.put_u32(8, 4); // value_size
        a.put_u32(12, entries);
        let fd = bpf(BPF_MAP_CREATE, &mut a)
            .map_err(|e| anyhow::anyhow!("BPF_MAP_CREATE (array of {entries}): {e}"))?;
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(U32Array { fd })
    }

    /// Write `values[i]` at `keys[i]` in one syscall.
    pub fn update_batch(&self, keys: &[u32], values: &[u32]) -> Result<()> {
        use std::os::fd::AsFd;
        lb_dataplane::update_u32(self.fd.as_fd(), keys, values)
            .map_err(|e| anyhow::anyhow!("BPF_MAP_UPDATE_BATCH: {e}"))
    }
}
