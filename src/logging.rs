//! Logging goes to a file (the dashboard owns the terminal); headless commands
//! also echo warnings to stderr, in colour only when stderr is a terminal.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Installs the global subscriber: everything at `info` and above into `file` when
/// given, and warnings to stderr when `echo_stderr`. Safe to call once per process.
pub fn init(file: Option<&Path>, echo_stderr: bool) -> std::io::Result<()> {
    let file_writer = match file {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            Some(Mutex::new(f))
        }
        None => None,
    };
    let stderr = std::io::stderr.with_max_level(if echo_stderr {
        tracing::Level::WARN
    } else {
        // Below ERROR nothing is written: effectively silent.
        tracing::Level::ERROR
    });
    let builder = tracing_subscriber::fmt().with_target(false);
    let result = match file_writer {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(f.with_max_level(tracing::Level::INFO))
            .try_init(),
        // Escape codes would litter a log file or a pipe (`2> err.txt`, CI logs).
        None if echo_stderr => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(stderr)
            .try_init(),
        None => return Ok(()),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    Ok(())
}
