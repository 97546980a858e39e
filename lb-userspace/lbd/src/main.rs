fn main() -> std::process::ExitCode {
    lbd::main()
}
