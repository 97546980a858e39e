use which::which;

/// Rebuild the programs when bpf-linker changes (a new LLVM can change the object), as
/// aya-template does.
///
/// Code generation happens in bpf-linker, so its flags choose the instructions:
/// `+allows-misaligned-mem-access` reads and writes packet fields with one load or store per
/// field instead of one per byte. The kernel's verifier accepts misaligned packet access on
/// architectures with efficient unaligned access (x86-64, arm64), where the balancer runs.
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
