fn main() -> std::process::ExitCode {
    lbctl::main()
}
