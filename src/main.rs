//! The `rampart` command line: argument parsing, output, exit codes.
//!
//! This is the only place that uses `anyhow`: library errors are `thiserror`
//! enums; here they are printed once, with their chain, and mapped to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
