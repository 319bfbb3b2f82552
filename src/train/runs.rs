//! A runs folder at a glance: one [`RunSummary`] per run folder below it, read from
//! the run's lock (is a trainer alive?), control file (paused?), `config.toml`
//! (the recipe) and `metrics.jsonl` (progress and results). Reading never blocks or
//! changes a run, so it is safe while runs train; a run folder is untrusted input
//! (regular files only, bounded reads: see `metrics_log`), and one that cannot be
//! read is listed as unreadable, with the reason, never dropped.

use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use super::events::{StopReason, TrainEvent};
use super::metrics_log::{MetricsError, fold_events};
use crate::run::folder::{ControlRequest, RunDir};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A trainer holds the lock and is stepping.
    Training,
    /// A trainer holds the lock and was asked to pause.
    Paused,
    /// All epochs (or the max steps, or the time limit) ran.
    Finished,
    /// The trainer reported an error.
    Failed,
    /// Stopped on request, or the trainer died without a last event: resumable.
    Interrupted,
    /// A run folder with no events yet.
    New,
    /// Its `metrics.jsonl` cannot be read (not a regular file, no permission): the
    /// reason is the summary's message.
    Unreadable,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Training => "training",
            Self::Paused => "paused",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::New => "new",
            Self::Unreadable => "unreadable",
        }
    }
}

/// One row of the runs table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub name: String,
    /// Written lossily (U+FFFD for each invalid byte) where the folder's name is not
    /// UTF-8; `path_not_utf8` then says so.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_not_utf8: bool,
    pub status: RunStatus,
    /// PID of the live trainer.
    pub pid: Option<u32>,
    pub backbone: String,
    pub image_size: u32,
    pub loss: String,
    pub mining: String,
    /// Optimizer steps done, and planned (0 when unknown).
    pub step: usize,
    pub total_steps: usize,
    pub best_val_top1: Option<f64>,
    pub best_val_top20: Option<f64>,
    /// Training seconds over every process that worked on the run.
    pub seconds: f64,
    /// Last change of `metrics.jsonl`, seconds since the Unix epoch.
    pub updated: Option<f64>,
    /// The failure's message, for a failed run; why it cannot be read, for an
    /// unreadable one.
    pub message: Option<String>,
}

fn lossy_path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// Whether `dir` looks like a run folder (a `metrics.jsonl` of any kind counts: a
/// named pipe there makes an unreadable run, not no run).
pub fn is_run(dir: &Path) -> bool {
    let run = RunDir::new(dir);
    run.metrics().symlink_metadata().is_ok()
        || run.config().is_file() && dir.join("checkpoints").is_dir()
}

/// The run folders directly below `dir`, by name.
pub fn list(dir: &Path) -> std::io::Result<Vec<RunSummary>> {
    Ok(run_dirs(dir)?.iter().map(|d| summarize(d)).collect())
}

/// The paths of the run folders directly below `dir`, sorted.
pub fn run_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && is_run(p))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// What a run's events say, folded one event at a time (so a log is never held
/// whole, and a follower can keep folding as the run grows).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventSummary {
    backbone: String,
    image_size: u32,
    loss: String,
    mining: String,
    step: usize,
    total_steps: usize,
    /// Best `(top-1, top-20)` by top-20.
    best: Option<(f64, f64)>,
    /// Seconds of the processes before the latest one.
    seconds: f64,
    process_seconds: f64,
    /// The latest `done` or `failed`, unless a process started after it.
    last_terminal: Option<Terminal>,
    events: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Terminal {
    Done(StopReason),
    Failed(String),
}

impl EventSummary {
    pub fn apply(&mut self, e: &TrainEvent) {
        self.events += 1;
        match e {
            TrainEvent::Started(s) => {
                self.backbone.clone_from(&s.backbone);
                self.image_size = s.image_size;
                self.loss.clone_from(&s.loss);
                self.mining.clone_from(&s.mining);
                self.total_steps = s.total_steps;
                self.step = self.step.max(s.start_step);
                self.seconds += self.process_seconds;
                self.process_seconds = 0.0;
                self.last_terminal = None;
            }
            TrainEvent::Step {
                step, elapsed_s, ..
            } => {
                self.step = *step;
                self.process_seconds = *elapsed_s;
            }
            TrainEvent::Epoch { val, .. } | TrainEvent::Validated { val, .. }
                if val.measured() && self.best.is_none_or(|(_, b)| val.val_top20 > b) =>
            {
                self.best = Some((val.val_top1, val.val_top20));
            }
            TrainEvent::Done {
                seconds, reason, ..
            } => {
                self.process_seconds = *seconds;
                self.last_terminal = Some(Terminal::Done(*reason));
            }
            TrainEvent::Failed { message, .. } => {
                self.last_terminal = Some(Terminal::Failed(message.clone()));
            }
            _ => {}
        }
    }
}

/// Why the run's lock or control file cannot be read, when one is there but is not
/// a regular file (a named pipe would have hung every reader).
fn not_regular(run: &RunDir) -> Option<String> {
    [run.lock_path(), run.control()]
        .into_iter()
        .find(|p| p.symlink_metadata().is_ok() && !p.is_file())
        .map(|p| {
            format!(
                "{}: not a regular file (a named pipe, device or folder)",
                p.display()
            )
        })
}

/// The summary of the run in `dir`.
pub fn summarize(dir: &Path) -> RunSummary {
    let mut events = EventSummary::default();
    let read = fold_events(&RunDir::new(dir).metrics(), |e| events.apply(&e));
    let unreadable = match read {
        Err(MetricsError::Io { source, .. }) if source.kind() != std::io::ErrorKind::NotFound => {
            Some(source.to_string())
        }
        _ => None,
    };
    summary_of(dir, &events, unreadable)
}

/// The summary of the run in `dir` from its folded events, with what its lock and
/// control file say now; `unreadable` is why its metrics cannot be read, if so.
pub fn summary_of(dir: &Path, events: &EventSummary, unreadable: Option<String>) -> RunSummary {
    let run = RunDir::new(dir);
    let e = events;
    let mut s = RunSummary {
        name: run.name(),
        path: dir.to_path_buf(),
        path_not_utf8: dir.to_str().is_none(),
        status: RunStatus::New,
        pid: run.locked_by(),
        backbone: e.backbone.clone(),
        image_size: e.image_size,
        loss: e.loss.clone(),
        mining: e.mining.clone(),
        step: e.step,
        total_steps: e.total_steps,
        best_val_top1: e.best.map(|b| b.0),
        best_val_top20: e.best.map(|b| b.1),
        seconds: e.seconds + e.process_seconds,
        updated: std::fs::metadata(run.metrics())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        message: None,
    };
    s.status = if s.pid.is_some() {
        if run.read_control() == ControlRequest::Pause {
            RunStatus::Paused
        } else {
            RunStatus::Training
        }
    } else if let Some(why) = unreadable
        .map(|reason| format!("{}: {reason}", run.metrics().display()))
        .or_else(|| not_regular(&run))
    {
        s.message = Some(why);
        RunStatus::Unreadable
    } else {
        match &e.last_terminal {
            Some(Terminal::Done(StopReason::Interrupted)) => RunStatus::Interrupted,
            Some(Terminal::Done(_)) => RunStatus::Finished,
            Some(Terminal::Failed(message)) => {
                s.message = Some(message.clone());
                RunStatus::Failed
            }
            None if e.events == 0 => RunStatus::New,
            None => RunStatus::Interrupted,
        }
    };
    s
}
