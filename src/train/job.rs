//! What a training run is asked to do, how it is steered while it runs, and how it
//! ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::events::StopReason;
use crate::config::Config;
use crate::eval::Retrieval;

/// Start/stop/pause requests from the outside (Ctrl-C, the dashboard), polled
/// between steps.
#[derive(Debug, Clone, Default)]
pub struct Control {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Finish the current step, write a checkpoint and return.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    /// The flag a signal handler sets.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }
}

/// What to train: the resolved config plus where.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub config: Config,
    pub data: PathBuf,
    pub run: PathBuf,
    pub resume: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    pub reason: StopReason,
    pub step: usize,
    pub best_val_top20: Option<f64>,
    pub last_val: Option<Retrieval>,
}
