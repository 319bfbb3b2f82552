//! A run is a folder: `config.toml` (the resolved config), `metrics.jsonl`,
//! `checkpoints/{last,best}.safetensors` with JSON sidecars, `index/`, the log, and a
//! lock file so two trainers never write one run.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::checkpoints::CheckpointKind;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run {} is being written by another trainer (pid {pid}); stop it first or choose another --run", run.display())]
    Locked { run: PathBuf, pid: u32 },
    #[error("run {}: {source}", run.display())]
    Io { run: PathBuf, source: io::Error },
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

    /// The pending request in the control file (absent = run).
    pub fn read_control(&self) -> ControlRequest {
        match std::fs::read_to_string(self.control())
            .as_deref()
            .map(str::trim)
        {
            Ok("pause") => ControlRequest::Pause,
            Ok("stop") => ControlRequest::Stop,
            _ => ControlRequest::Run,
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn create(&self) -> Result<(), RunError> {
        std::fs::create_dir_all(self.root.join("checkpoints")).map_err(|source| RunError::Io {
            run: self.root.clone(),
            source,
        })
    }

    /// PID of the live process holding the lock, if any. The OS lock decides; the
    /// file's content only names the holder.
    pub fn locked_by(&self) -> Option<u32> {
        let file = std::fs::File::open(self.lock_path()).ok()?;
        match file.try_lock_shared() {
            // Nobody holds it (the shared lock is released as `file` closes).
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => Some(holder_pid(&self.lock_path())),
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!("cannot query the lock of run {}: {e}", self.root.display());
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
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RunError::Locked {
                    run: self.root.clone(),
                    pid: holder_pid(&path),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(io_err)?;
        Ok(RunLock { file })
    }
}

/// The PID written in a held lock file; the holder writes it right after taking the
/// lock, so a reader arriving in between waits a moment. 0 when it never appears.
fn holder_pid(path: &Path) -> u32 {
    for _ in 0..50 {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    0
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
