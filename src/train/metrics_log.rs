//! `metrics.jsonl`: one JSON event per line, appended and flushed as it happens, so
//! another process (the dashboard, `vitrine watch`) can replay and follow a run.
//! Readers treat the file as untrusted input (a run folder may be copied, edited or
//! crafted): regular files only, bounded reads, lines of at most [`MAX_LINE`] bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
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
        let file = crate::fsutil::open_regular_with(
            OpenOptions::new().create(true).append(true).read(true),
            path,
        )
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

/// The longest line a follower reads: an event is a few hundred bytes (a failure's
/// message a few thousand); a longer line is no event and is skipped unread.
pub const MAX_LINE: usize = 256 * 1024;
/// The most a follower reads in one [`MetricsFollower::poll`]; the rest waits for the
/// next (see [`MetricsFollower::caught_up`]), so memory stays bounded whatever the
/// file holds.
pub const MAX_POLL_BYTES: u64 = 4 << 20;
/// The size of each read.
const CHUNK: usize = 64 * 1024;

/// Which file a follower has been reading: a `metrics.jsonl` replaced (another run
/// copied over it, a new file renamed into place) is another inode, or the same inode
/// rewritten with another first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

/// Reads complete lines from where it stopped last time, in bounded chunks; a
/// trailing partial line (a writer mid-append) waits for the next poll. A line that
/// is not an event (a torn write in an old file) or is longer than [`MAX_LINE`] is
/// skipped with a warning and counted, never fatal: the events around it still
/// replay. Only a regular file is opened (a named pipe or a device is an error,
/// never waited on), and a file replaced under the follower is read again from its
/// start ([`Self::restarts`] tells the caller to forget what it built).
///
/// The partial line is read again from the file on the next poll rather than kept:
/// a writer that reopens the file cuts a torn last line off (see
/// [`MetricsWriter::append`]) and appends from where it started, and a follower
/// that kept the torn bytes would glue them to the next event and lose it.
pub struct MetricsFollower {
    path: PathBuf,
    /// Just after the last complete line read (or skipped).
    offset: u64,
    line: usize,
    skipped: usize,
    /// Inside a line longer than [`MAX_LINE`]: skip up to its end.
    skipping: bool,
    identity: Option<Identity>,
    /// Length and hash of the first line, to notice the file rewritten in place.
    first_line: Option<(usize, u64)>,
    restarts: usize,
    caught_up: bool,
}

impl MetricsFollower {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            line: 0,
            skipped: 0,
            skipping: false,
            identity: None,
            first_line: None,
            restarts: 0,
            caught_up: true,
        }
    }

    /// Lines skipped so far because they were not events.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// How many times the file was found replaced (or cut shorter) and read again
    /// from its start: events from before the change belong to another file.
    pub fn restarts(&self) -> usize {
        self.restarts
    }

    /// Whether the last poll read up to the end of the file (false when it stopped
    /// at [`MAX_POLL_BYTES`]: poll again at once).
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// New events since the last call (empty when the file does not exist yet).
    pub fn poll(&mut self) -> Result<Vec<TrainEvent>, MetricsError> {
        let path = self.path.clone();
        let io_err = |source| MetricsError::Io {
            path: path.clone(),
            source,
        };
        let file = match crate::fsutil::open_regular(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.caught_up = true;
                return Ok(Vec::new());
            }
            Err(e) => return Err(io_err(e)),
        };
        let meta = file.metadata().map_err(io_err)?;
        let identity = Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let replaced = self.identity.is_some_and(|known| known != identity)
            || meta.len() < self.offset
            || self.first_line_changed(&file).map_err(io_err)?;
        if replaced {
            tracing::info!(
                "{} was replaced; reading it from the start",
                self.path.display()
            );
            *self = Self {
                skipped: self.skipped,
                restarts: self.restarts + 1,
                ..Self::new(&self.path)
            };
        }
        self.identity = Some(identity);
        self.read_lines(&file).map_err(io_err)
    }

    /// Whether the first line is no longer the one read first (same inode, new text).
    fn first_line_changed(&self, file: &File) -> io::Result<bool> {
        let Some((len, hash)) = self.first_line else {
            return Ok(false);
        };
        let mut buf = vec![0u8; len];
        let n = read_full_at(file, &mut buf, 0)?;
        Ok(n < len || crate::fsutil::fnv1a64(&buf) != hash)
    }

    fn read_lines(&mut self, file: &File) -> io::Result<Vec<TrainEvent>> {
        let mut events = Vec::new();
        let start = self.offset;
        let mut at = self.offset;
        let mut line: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; CHUNK];
        self.caught_up = false;
        loop {
            if at - start >= MAX_POLL_BYTES {
                return Ok(events);
            }
            let n = file.read_at(&mut chunk, at)?;
            if n == 0 {
                self.caught_up = true;
                return Ok(events);
            }
            at += n as u64;
            let mut rest = &chunk[..n];
            while let Some(i) = rest.iter().position(|&b| b == b'\n') {
                let (head, tail) = rest.split_at(i + 1);
                if self.skipping {
                    self.skipping = false;
                } else if line.len() + i > MAX_LINE {
                    self.skip_long_line();
                } else {
                    line.extend_from_slice(head);
                    self.complete_line(&line, &mut events);
                }
                line.clear();
                self.offset = at - tail.len() as u64;
                rest = tail;
            }
            if !self.skipping {
                if line.len() + rest.len() > MAX_LINE {
                    self.skip_long_line();
                    self.skipping = true;
                    line.clear();
                } else {
                    line.extend_from_slice(rest);
                }
            }
            if self.skipping {
                // Never read again: an over-long line is skipped for good.
                self.offset = at;
            }
        }
    }

    fn skip_long_line(&mut self) {
        self.line += 1;
        self.skipped += 1;
        tracing::warn!(
            "{}:{}: a line longer than {MAX_LINE} bytes is no training event; skipped",
            self.path.display(),
            self.line
        );
    }

    fn complete_line(&mut self, line: &[u8], events: &mut Vec<TrainEvent>) {
        self.line += 1;
        if self.line == 1 {
            self.first_line = Some((line.len(), crate::fsutil::fnv1a64(line)));
        }
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
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
}

/// Reads into `buf` from `offset` until it is full or the file ends; how many bytes.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every complete event in a metrics file (read in bounded chunks; the events
/// themselves are kept, so this is for files of a run, not arbitrary input: see
/// [`fold_events`]).
pub fn read_all(path: &Path) -> Result<Vec<TrainEvent>, MetricsError> {
    let mut events = Vec::new();
    fold_events(path, |e| events.push(e))?;
    Ok(events)
}

/// Hands every complete event of a metrics file to `f`, reading it in bounded chunks:
/// memory stays bounded whatever the file's size.
pub fn fold_events(path: &Path, mut f: impl FnMut(TrainEvent)) -> Result<(), MetricsError> {
    let mut follower = MetricsFollower::new(path);
    // The file must exist (a follower waits for it to appear; a reader does not).
    crate::fsutil::open_regular(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    loop {
        follower.poll()?.into_iter().for_each(&mut f);
        if follower.caught_up() {
            return Ok(());
        }
    }
}
