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
    pub fn append(path: &Path) -> Result<Self, MetricsError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| MetricsError::Io {
                path: path.to_path_buf(),
                source,
            })?;
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

/// Reads complete lines from where it stopped last time; a trailing partial line
/// (a writer mid-append) waits for the next poll.
pub struct MetricsFollower {
    path: PathBuf,
    offset: u64,
    line: usize,
    pending: String,
}

impl MetricsFollower {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            line: 0,
            pending: String::new(),
        }
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
        let mut chunk = String::new();
        let read = BufReader::new(file)
            .read_to_string(&mut chunk)
            .map_err(io_err)?;
        self.offset += read as u64;
        self.pending.push_str(&chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=end).collect();
            self.line += 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let event = serde_json::from_str(line).map_err(|e| MetricsError::Malformed {
                path: self.path.clone(),
                line: self.line,
                message: e.to_string(),
            })?;
            events.push(event);
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
