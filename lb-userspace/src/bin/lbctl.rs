fn main() -> std::process::ExitCode {
    lb_userspace::ctl::main()
}
