//! A run is a folder: `config.toml` (the resolved config), `metrics.jsonl`,
//! `checkpoints/{last,best}.safetensors` with JSON sidecars, `index/`, the log, and a
//! lock file so two trainers never write one run.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{fsutil, pid};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run {} is being written by another trainer{}; stop it first or choose another --run", run.display(), pid.map_or_else(String::new, |p| format!(" (pid {p})")))]
    Locked { run: PathBuf, pid: Option<u32> },
    #[error("run {}: {source}", run.display())]
    Io { run: PathBuf, source: io::Error },
}

/// The run's two checkpoints, `checkpoints/{last,best}.safetensors`: the newest
/// (`last`, which resumes) and the best by val top-20 (`best`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    Last,
    Best,
}

impl CheckpointKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Last => "last",
            Self::Best => "best",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn name(&self) -> String {
        self.root.file_name().map_or_else(
            || self.root.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("vitrine.log")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    pub fn checkpoint(&self, kind: CheckpointKind) -> PathBuf {
        self.root.join("checkpoints").join(match kind {
            CheckpointKind::Last => "last.safetensors",
            CheckpointKind::Best => "best.safetensors",
        })
    }

    /// Optimizer moments saved beside `last` (only `last` resumes).
    pub fn optimizer_state(&self) -> PathBuf {
        self.root.join("checkpoints").join("last.optim.safetensors")
    }

    /// Requests to a trainer running in another process: `pause`, `stop` or empty.
    pub fn control(&self) -> PathBuf {
        self.root.join("control")
    }

    /// Asks the trainer writing this run to pause, continue or stop (with a checkpoint).
    pub fn send_control(&self, request: ControlRequest) -> io::Result<()> {
        let text = match request {
            ControlRequest::Run => "",
            ControlRequest::Pause => "pause",
            ControlRequest::Stop => "stop",
        };
        crate::fsutil::write_bytes_atomic(&self.control(), text.as_bytes())
    }

    /// The pending request in the control file (absent, unreadable or not a regular
    /// file = run; a named pipe is never waited on).
    pub fn read_control(&self) -> ControlRequest {
        match fsutil::read_small_text(&self.control(), 64)
            .as_deref()
            .map(str::trim)
        {
            Ok("pause") => ControlRequest::Pause,
            Ok("stop") => ControlRequest::Stop,
            _ => ControlRequest::Run,
        }
    }

    /// The lock file (see [`Self::lock`]).
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn create(&self) -> Result<(), RunError> {
        std::fs::create_dir_all(self.root.join("checkpoints")).map_err(|source| RunError::Io {
            run: self.root.clone(),
            source,
        })
    }

    /// PID of the live trainer holding the lock, if any. The OS lock decides; the
    /// file's content only names the holder. The probe is a shared lock held for an
    /// instant, which a starting trainer waits out (see [`Self::lock`]). A holder
    /// that never writes its PID is not a vitrine trainer (`flock RUN/lock …`):
    /// reported as none, with a warning, never as PID 0.
    pub fn locked_by(&self) -> Option<u32> {
        let file = match fsutil::open_regular(&self.lock_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                // A named pipe or device: no trainer can hold it (`runs` says why).
                tracing::debug!("{}: {e}", self.lock_path().display());
                return None;
            }
        };
        let mut query_error = None;
        let held = || match file.try_lock_shared() {
            // Nobody holds it (the shared lock is released as `file` closes).
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(e)) => {
                query_error = Some(e);
                false
            }
        };
        // Held: the trainer writes its PID right after taking the lock, and empties
        // the file right before letting it go; `pid::holder` waits for either.
        match pid::holder(&file, PID_WAIT, held) {
            pid::Holder::Released => {
                if let Some(e) = query_error {
                    tracing::warn!("cannot query the lock of run {}: {e}", self.root.display());
                }
                None
            }
            pid::Holder::Named(pid) | pid::Holder::Unnamed(Some(pid)) => Some(pid),
            pid::Holder::Unnamed(None) => {
                tracing::warn!(
                    "{} is locked by a process that wrote no PID in {PID_WAIT:?} (not a vitrine trainer)",
                    self.lock_path().display()
                );
                None
            }
        }
    }

    /// Takes the run's lock: an exclusive OS lock (`flock`) on `RUN/lock`, released
    /// by the kernel when the holder exits however it exits, so a crashed trainer
    /// never leaves a lock behind and two processes can never both hold it. The
    /// holder's PID is written into the file for display.
    pub fn lock(&self) -> Result<RunLock, RunError> {
        self.create()?;
        let path = self.lock_path();
        let io_err = |source| RunError::Io {
            run: self.root.clone(),
            source,
        };
        let mut file = fsutil::open_regular_with(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
            &path,
        )
        .map_err(|e| RunError::Io {
            run: self.root.clone(),
            source: io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        })?;
        self.take(&file)?;
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(io_err)?;
        Ok(RunLock { file })
    }
}

/// How long a reader waits for the holder of a lock to write its PID.
const PID_WAIT: Duration = Duration::from_secs(1);
/// How long a starting trainer waits out readers probing the lock: each holds its
/// shared lock for microseconds, so only a flood of them could last this long.
const READERS_WAIT: Duration = Duration::from_secs(2);

impl RunDir {
    /// Takes `file`'s exclusive lock. An exclusive lock is refused while a reader
    /// probes with its shared one ([`Self::locked_by`]), so a refusal is told apart:
    /// if a shared lock can be had, only readers were there and the trainer tries
    /// again; if not, a trainer holds the run.
    fn take(&self, file: &File) -> Result<(), RunError> {
        let io_err = |source| RunError::Io {
            run: self.root.clone(),
            source,
        };
        let deadline = Instant::now() + READERS_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
            match file.try_lock_shared() {
                Ok(()) => file.unlock().map_err(io_err)?,
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(RunError::Locked {
                        run: self.root.clone(),
                        pid: pid::holder(file, PID_WAIT, || true).pid(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
            if Instant::now() >= deadline {
                return Err(RunError::Locked {
                    run: self.root.clone(),
                    pid: None,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    Run,
    Pause,
    Stop,
}

/// Held while training. Dropping it empties the file and releases the OS lock; the
/// file itself stays (deleting it would let a newcomer lock a fresh file while an old
/// opener still holds the unlinked one).
#[derive(Debug)]
pub struct RunLock {
    file: std::fs::File,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}
