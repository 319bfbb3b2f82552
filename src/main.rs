//! The `vitrine` binary: choose the allocator, parse the command line, set up
//! logging, dispatch.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use vitrine::cli::Cli;
use vitrine_kernels::alloc::{MallocTuning, ReuseLargeBlocks, configure_allocator};

/// Large activation and gradient buffers are reused between training steps instead
/// of being mapped and zeroed afresh (see `vitrine_kernels::alloc`).
#[global_allocator]
static ALLOCATOR: ReuseLargeBlocks = ReuseLargeBlocks::new();

fn main() -> ExitCode {
    // The process-wide memory policy, decided here once: glibc keeps freed memory for
    // the next training step or batch instead of unmapping and re-faulting it (a speed
    // setting; `MALLOC_*` variables in the environment take precedence).
    configure_allocator(MallocTuning::KeepFreedMemory);
    let cli = Cli::parse();
    match vitrine::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote paths and file contents: no raw control characters.
            eprintln!(
                "error: {}",
                vitrine::printable::escape_lines(&vitrine::commands::error_message(&e))
            );
            ExitCode::FAILURE
        }
    }
}
