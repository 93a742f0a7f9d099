fn main() -> std::process::ExitCode {
    pgwarden::cli::main()
}
