use anyhow::{Context as _, anyhow};
use aya_build::Package;

/// Builds the XDP programs (lb-ebpf, nightly, bpfel-unknown-none) and leaves the objects in
/// OUT_DIR, where `lb_dataplane` embeds them: one `cargo build`, one binary. The directory
/// is passed on (`links` metadata) so the benchmark crate embeds its object from this build
/// instead of building lb-ebpf a second time.
fn main() -> anyhow::Result<()> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here
        .ancestors()
        .nth(2)
        .context("lb-userspace/dataplane has no grandparent directory")?
        .join("lb-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package { name: "lb-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install rust-src and bpf-linker")?;
    let out = std::env::var("OUT_DIR").context("cargo sets OUT_DIR for build scripts")?;
    println!("cargo::metadata=out_dir={out}");
    Ok(())
}
