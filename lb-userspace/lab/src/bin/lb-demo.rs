fn main() -> std::process::ExitCode {
    lb_lab::demo::main()
}
