//! The baseline for ring writes: a plain `BPF_MAP_TYPE_ARRAY` of u32 like `LB_RINGS`,
//! written with one `BPF_MAP_UPDATE_BATCH` call (the kernel's cheapest way to write many
//! elements), through the raw bpf(2) syscall since aya 0.14 has no batch operations.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
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

    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn get_u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().unwrap())
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
        Ok(U32Array {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Write `values[i]` at `keys[i]` in one syscall.
    pub fn update_batch(&self, keys: &[u32], values: &[u32]) -> Result<()> {
        assert_eq!(keys.len(), values.len());
        let mut a = Attr::new();
        // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32;
        //          elem_flags, flags: u64 } batch;
        a.put_u64(16, keys.as_ptr() as u64);
        a.put_u64(24, values.as_ptr() as u64);
        a.put_u32(32, keys.len() as u32);
        a.put_u32(36, self.fd.as_raw_fd() as u32);
        bpf(BPF_MAP_UPDATE_BATCH, &mut a)
            .map_err(|e| anyhow::anyhow!("BPF_MAP_UPDATE_BATCH: {e}"))?;
        let done = a.get_u32(32) as usize;
        if done != keys.len() {
            bail!(
                "BPF_MAP_UPDATE_BATCH wrote {done} of {} elements",
                keys.len()
            );
        }
        Ok(())
    }
}
