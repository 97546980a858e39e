use which::which;

/// Rebuild the programs when bpf-linker changes (a new LLVM can change the object), as
/// aya-template does.
///
/// Code generation happens in bpf-linker, so its flags choose the instructions:
/// `+allows-misaligned-mem-access` reads and writes packet fields with one load or store per
/// field instead of one per byte. The kernel's verifier accepts misaligned packet access on
/// architectures with efficient unaligned access (x86-64, arm64), where the balancer runs.
/// Copies of byte arrays into the packet are still expanded a byte at a time (in order, by
/// the known alignment), so packet writes store `u16`/`u32`/`u64` values instead. The
/// in-order expansion stays on: without it, LLVM copies 4-aligned stack values with 8-byte
/// stores, and the verifier refuses misaligned stack access.
/// The feature also lets LLVM copy and merge values on the stack with misaligned 8-byte
/// moves, which the verifier refuses. So the programs keep map values in the maps (handed on
/// by reference, e.g. `&'static VipMeta`) and per-packet state in the per-CPU scratch slot,
/// and functions that are not inlined return single words. A build that breaks this fails
/// to load, and every test loads the programs, so it never passes CI.
/// (Not `+alu32`: LLVM then does pointer arithmetic in 32-bit registers, which the verifier
/// refuses.)
fn main() {
    let linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` to build it against the \
         nightly toolchain's LLVM",
    );
    println!("cargo:rerun-if-changed={}", linker.to_str().unwrap());
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
