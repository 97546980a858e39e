use anyhow::{Context as _, anyhow};
use aya_build::Package;

/// Builds the XDP programs (lb-ebpf, nightly, bpfel-unknown-none) and leaves the objects in
/// OUT_DIR, where `lb_userspace::programs` embeds them: one `cargo build`, one binary.
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("lb-userspace has no parent directory")?
        .join("lb-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package { name: "lb-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install rust-src and bpf-linker")
}
