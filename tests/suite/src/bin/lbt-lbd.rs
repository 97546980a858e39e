//! The daemon, built inside the test crate so namespace tests can run it as a process
//! (`CARGO_BIN_EXE_lbt-lbd`); the same code as `lbd`.
fn main() -> std::process::ExitCode {
    lbd::main()
}
