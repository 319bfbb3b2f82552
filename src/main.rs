//! The `vitrine` binary: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use vitrine::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match vitrine::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
