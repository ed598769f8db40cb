//! The thin binary: parse arguments, hand them to the library, report errors.

fn main() -> std::process::ExitCode {
    cotforge::cli::main()
}
