use which::which;

/// Rebuild the programs when bpf-linker changes (a new LLVM can change the object), as
/// aya-template does.
fn main() {
    let linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` to build it against the \
         nightly toolchain's LLVM",
    );
    println!("cargo:rerun-if-changed={}", linker.to_str().unwrap());
}
