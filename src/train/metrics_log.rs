//! `metrics.jsonl`: one JSON event per line, appended and flushed as it happens, so
//! another process (the dashboard, `vitrine watch`) can replay and follow a run.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::events::TrainEvent;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot open {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}:{line}: not a training event: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens `path` for appending. A torn last line (power lost mid-append) is cut
    /// off first, so the next event starts on a line of its own.
    pub fn append(path: &Path) -> Result<Self, MetricsError> {
        let io_err = |source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io_err)?;
        repair_torn_tail(&file, path).map_err(io_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Writes one line in a single `write` so readers never see half an event.
    pub fn write(&mut self, event: &TrainEvent) -> Result<(), MetricsError> {
        let mut line = serde_json::to_string(event).map_err(|e| MetricsError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| MetricsError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Truncates `file` after its last newline when its last byte is not one.
fn repair_torn_tail(file: &File, path: &Path) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Look back in blocks for the last newline; events are short.
    let mut reader = file;
    let mut end = len;
    let mut block = vec![0u8; 4096];
    loop {
        let start = end.saturating_sub(block.len() as u64);
        let n = (end - start) as usize;
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(&mut block[..n])?;
        if end == len && block[n - 1] == b'\n' {
            return Ok(());
        }
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            tracing::warn!(
                "{}: cut a torn last line ({} bytes) left by an interrupted write",
                path.display(),
                len - keep
            );
            return file.set_len(keep);
        }
        if start == 0 {
            tracing::warn!(
                "{}: cut a torn first line ({len} bytes) left by an interrupted write",
                path.display()
            );
            return file.set_len(0);
        }
        end = start;
    }
}

/// Reads complete lines from where it stopped last time; a trailing partial line
/// (a writer mid-append) waits for the next poll. A line that is not an event (a
/// torn write in an old file) is skipped with a warning and counted, never fatal:
/// the events around it still replay.
///
/// The partial line is read again from the file on the next poll rather than kept:
/// a writer that reopens the file cuts a torn last line off (see
/// [`MetricsWriter::append`]) and appends from where it started, and a follower
/// that kept the torn bytes would glue them to the next event and lose it.
pub struct MetricsFollower {
    path: PathBuf,
    /// Just after the last complete line read.
    offset: u64,
    line: usize,
    skipped: usize,
}

impl MetricsFollower {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            line: 0,
            skipped: 0,
        }
    }

    /// Lines skipped so far because they were not events.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// New events since the last call (empty when the file does not exist yet).
    pub fn poll(&mut self) -> Result<Vec<TrainEvent>, MetricsError> {
        let io_err = |source| MetricsError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        file.seek(SeekFrom::Start(self.offset)).map_err(io_err)?;
        let mut chunk = Vec::new();
        BufReader::new(file)
            .read_to_end(&mut chunk)
            .map_err(io_err)?;
        // Complete lines only; a partial last line is read again next time.
        let complete = chunk.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let mut events = Vec::new();
        for line in chunk[..complete].split_inclusive(|&b| b == b'\n') {
            self.line += 1;
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice(line) {
                Ok(event) => events.push(event),
                Err(e) => {
                    self.skipped += 1;
                    let bad = MetricsError::Malformed {
                        path: self.path.clone(),
                        line: self.line,
                        message: e.to_string(),
                    };
                    tracing::warn!("{bad}; skipped");
                }
            }
        }
        Ok(events)
    }
}

/// Every complete event in a metrics file.
pub fn read_all(path: &Path) -> Result<Vec<TrainEvent>, MetricsError> {
    if !path.exists() {
        return Err(MetricsError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        });
    }
    MetricsFollower::new(path).poll()
}
