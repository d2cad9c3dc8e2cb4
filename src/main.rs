//! The `rafi` command; everything but the entry point is in `cli/`.
#![deny(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
