//! `lbctl`, built inside the test crate so namespace tests can run it (`CARGO_BIN_EXE_lbt-lbctl`).
fn main() -> std::process::ExitCode {
    lbctl::main()
}
