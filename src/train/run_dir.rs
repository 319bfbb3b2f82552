//! A run is a folder: `config.toml` (the resolved config), `metrics.jsonl`,
//! `checkpoints/{last,best}.safetensors` with JSON sidecars, `index/`, the log, and a
//! lock file so two trainers never write one run.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::events::CheckpointKind;

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

    /// PID of the live process holding the lock, if any.
    pub fn locked_by(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.lock_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Takes the run's lock; a lock left by a dead process is taken over.
    pub fn lock(&self) -> Result<RunLock, RunError> {
        self.create()?;
        let path = self.lock_path();
        let io_err = |source| RunError::Io {
            run: self.root.clone(),
            source,
        };
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id()).map_err(io_err)?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if let Some(pid) = self.locked_by().filter(|&p| p != std::process::id()) {
                        return Err(RunError::Locked {
                            run: self.root.clone(),
                            pid,
                        });
                    }
                    tracing::warn!("taking over the stale lock of run {}", self.root.display());
                    std::fs::remove_file(&path).map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(io_err(io::Error::other("could not take the run lock")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    Run,
    Pause,
    Stop,
}

/// Held while training; removes the lock file when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this PID exists (Linux `/proc`; elsewhere assumed alive).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}
