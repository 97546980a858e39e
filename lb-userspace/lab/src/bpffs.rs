//! The bpffs mounts labs pin under. Not /sys/fs/bpf: `ip netns exec` remounts /sys, hiding
//! it. A lab mounts its own on first use and takes it away again once nothing is pinned there,
//! so no run leaves a mount behind.

use std::path::Path;

use lb_dataplane::on_bpffs;

use crate::netns::sh;

/// What the kernel itself puts in every bpffs mount (bpf_preload's iterators).
pub const KERNEL_OWN: [&str; 2] = ["maps.debug", "progs.debug"];

/// Mount bpffs at `dir` unless it is mounted there already.
pub fn mount(dir: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {dir}: {e}"));
    if !on_bpffs(Path::new(dir)) {
        sh(&format!("mount -t bpf bpf {dir}"));
    }
}

/// Unmount bpffs at `dir` and remove the mount point if nothing is pinned there any more
/// (another run may still be using it). Returns whether it is gone.
pub fn release(dir: &str) -> bool {
    let path = Path::new(dir);
    if !on_bpffs(path) {
        return !path.exists() || std::fs::remove_dir(path).is_ok();
    }
    let empty = std::fs::read_dir(path).is_ok_and(|d| {
        d.flatten()
            .all(|e| KERNEL_OWN.contains(&e.file_name().to_string_lossy().as_ref()))
    });
    empty
        && std::process::Command::new("umount")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
        && std::fs::remove_dir(path).is_ok()
}
