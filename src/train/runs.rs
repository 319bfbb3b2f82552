//! A runs folder at a glance: one [`RunSummary`] per run folder below it, read from
//! the run's lock (is a trainer alive?), control file (paused?), `config.toml`
//! (the recipe) and `metrics.jsonl` (progress and results). Reading never blocks or
//! changes a run, so it is safe while runs train.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::events::{StopReason, TrainEvent};
use super::metrics_log::read_all;
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
        }
    }
}

/// One row of the runs table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub path: PathBuf,
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
    /// The failure's message, for a failed run.
    pub message: Option<String>,
}

/// Whether `dir` looks like a run folder.
pub fn is_run(dir: &Path) -> bool {
    let run = RunDir::new(dir);
    run.metrics().is_file() || run.config().is_file() && dir.join("checkpoints").is_dir()
}

/// The run folders directly below `dir`, by name.
pub fn list(dir: &Path) -> std::io::Result<Vec<RunSummary>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && is_run(p))
        .collect();
    dirs.sort();
    Ok(dirs.iter().map(|d| summarize(d)).collect())
}

/// The summary of the run in `dir` (a run that cannot be read shows as `New`).
pub fn summarize(dir: &Path) -> RunSummary {
    let run = RunDir::new(dir);
    let events = read_all(&run.metrics()).unwrap_or_default();
    let mut s = RunSummary {
        name: run.name(),
        path: dir.to_path_buf(),
        status: RunStatus::New,
        pid: run.locked_by(),
        backbone: String::new(),
        image_size: 0,
        loss: String::new(),
        mining: String::new(),
        step: 0,
        total_steps: 0,
        best_val_top1: None,
        best_val_top20: None,
        seconds: 0.0,
        updated: std::fs::metadata(run.metrics())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        message: None,
    };
    let mut best: Option<(f64, f64)> = None;
    let mut last_terminal = None;
    let mut process_seconds = 0.0;
    for e in &events {
        match e {
            TrainEvent::Started {
                backbone,
                image_size,
                loss,
                mining,
                total_steps,
                start_step,
                ..
            } => {
                s.backbone.clone_from(backbone);
                s.image_size = *image_size;
                s.loss.clone_from(loss);
                s.mining.clone_from(mining);
                s.total_steps = *total_steps;
                s.step = s.step.max(*start_step);
                s.seconds += process_seconds;
                process_seconds = 0.0;
                last_terminal = None;
            }
            TrainEvent::Step {
                step, elapsed_s, ..
            } => {
                s.step = *step;
                process_seconds = *elapsed_s;
            }
            TrainEvent::Epoch {
                val_top1,
                val_top20,
                ..
            }
            | TrainEvent::Validated {
                val_top1,
                val_top20,
                ..
            } if val_top20.is_finite() && best.is_none_or(|(_, b)| *val_top20 > b) => {
                best = Some((*val_top1, *val_top20));
            }
            TrainEvent::Done { seconds, .. } => {
                process_seconds = *seconds;
                last_terminal = Some(e);
            }
            TrainEvent::Failed { .. } => last_terminal = Some(e),
            _ => {}
        }
    }
    s.seconds += process_seconds;
    s.best_val_top1 = best.map(|b| b.0);
    s.best_val_top20 = best.map(|b| b.1);
    s.status = if s.pid.is_some() {
        if run.read_control() == ControlRequest::Pause {
            RunStatus::Paused
        } else {
            RunStatus::Training
        }
    } else {
        match last_terminal {
            Some(TrainEvent::Done { reason, .. }) => match reason {
                StopReason::Interrupted => RunStatus::Interrupted,
                _ => RunStatus::Finished,
            },
            Some(TrainEvent::Failed { message, .. }) => {
                s.message = Some(message.clone());
                RunStatus::Failed
            }
            _ if events.is_empty() => RunStatus::New,
            _ => RunStatus::Interrupted,
        }
    };
    s
}
