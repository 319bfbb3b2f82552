//! Results on stdout and notes on stderr, without `println!`'s panic when the reader
//! has gone. A closed stdout (`vitrine runs | head -1`) means the reader has all it
//! wanted: commands stop cleanly on [`OutputError::Closed`] (exit 0, as Ctrl-C does;
//! `train` first writes its checkpoint).

use std::io::{self, Write};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("stdout was closed by its reader")]
    Closed,
    #[error("cannot write to stdout: {0}")]
    Io(io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Self::Closed
        } else {
            Self::Io(e)
        }
    }
}

/// Writes `text` on stdout as it is, flushed (a reader sees each result at once).
pub fn text(text: &str) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Writes `text` and a newline on stdout.
pub fn line(text: &str) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Writes `text` and a newline on stderr; a closed stderr loses the note, nothing else.
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// Whether `error` (or one of its causes) is a closed stdout.
pub fn is_closed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(error);
    while let Some(err) = e {
        if matches!(err.downcast_ref::<OutputError>(), Some(OutputError::Closed)) {
            return true;
        }
        e = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_a_closed_stdout_and_other_errors_are_not() {
        let closed = OutputError::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_closed(&closed));
        let full = OutputError::from(io::Error::from(io::ErrorKind::StorageFull));
        assert!(!is_closed(&full));
        assert!(full.to_string().contains("cannot write to stdout"));
    }
}
