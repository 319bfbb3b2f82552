//! The `vitrine` binary: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use vitrine::block_reuse::ReuseLargeBlocks;
use vitrine::cli::Cli;

/// Large activation and gradient buffers are reused between training steps instead
/// of being mapped and zeroed afresh (see `block_reuse`).
#[global_allocator]
static ALLOCATOR: ReuseLargeBlocks = ReuseLargeBlocks::new();

fn main() -> ExitCode {
    let cli = Cli::parse();
    match vitrine::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote paths and file contents: no raw control characters.
            eprintln!(
                "error: {}",
                vitrine::printable::escape_lines(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}
