//! The `vitrine` binary: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use vitrine::cli::Cli;

fn main() -> ExitCode {
    let _cli = Cli::parse();
    ExitCode::SUCCESS
}
