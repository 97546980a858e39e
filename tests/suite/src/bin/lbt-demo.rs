//! The demo (`lb-demo`), built inside the test crate so a test can run it
//! (`CARGO_BIN_EXE_lbt-demo`).
fn main() -> std::process::ExitCode {
    lb_lab::demo::main()
}
