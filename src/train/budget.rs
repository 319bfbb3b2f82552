//! The run's time budget (`train.time_limit`) across all its processes: the seconds
//! it has trained so far, the reserve the end of the run needs (one more step, the
//! final validation, the last checkpoint writes) and the learning-rate schedule's
//! position. Its state is saved in every checkpoint, so a run interrupted and resumed
//! stops where an uninterrupted one would, and never past its limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Recent steps whose longest one the reserve keeps.
const STEP_WINDOW: usize = 8;

/// What a checkpoint keeps of the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetState {
    /// Seconds the run trained (and validated) over all its processes.
    pub elapsed_s: f64,
    /// Seconds the newest validation took: the final one is kept in reserve.
    pub validation_s: f64,
    /// The longest of the recent steps, in seconds (data loading included).
    pub step_s: f64,
    /// The longest checkpoint write, in seconds (estimated until one is measured).
    pub checkpoint_s: f64,
    /// Whether `checkpoint_s` was measured rather than estimated.
    pub checkpoint_measured: bool,
    /// Where the learning-rate schedule stood (0..=1)…
    pub schedule_progress: f64,
    /// …measured against this many steps and this limit (another limit or step count
    /// on resume measures it afresh).
    pub schedule_total_steps: usize,
    pub schedule_limit_s: Option<f64>,
}

impl BudgetState {
    /// Seconds the end of the run may need: one more step, the final validation and
    /// two checkpoint writes (`best`, `last`).
    pub fn reserve_s(&self) -> f64 {
        self.step_s + self.validation_s + 2.0 * self.checkpoint_s
    }
}

/// The clock of one process of the run, starting from the saved state.
#[derive(Debug, Clone)]
pub struct Budget {
    limit_s: Option<f64>,
    state: BudgetState,
    /// Seconds trained before this process (the checkpoint's).
    carried_s: f64,
    since: Instant,
    /// Set when the run stops: its final validation and checkpoint are not training.
    frozen_s: Option<f64>,
    steps: VecDeque<f64>,
}

impl Budget {
    /// A run's clock: `saved` is the checkpoint's state (default for a new run).
    pub fn new(limit: Option<Duration>, saved: BudgetState) -> Self {
        Self {
            limit_s: limit.map(|l| l.as_secs_f64()),
            carried_s: saved.elapsed_s,
            state: saved,
            since: Instant::now(),
            frozen_s: None,
            steps: VecDeque::new(),
        }
    }

    /// Seconds trained, over every process of the run.
    pub fn elapsed(&self) -> f64 {
        self.frozen_s
            .unwrap_or_else(|| self.carried_s + self.since.elapsed().as_secs_f64())
    }

    /// Seconds the end of the run may need (see [`BudgetState::reserve_s`]).
    pub fn reserve(&self) -> f64 {
        self.state.reserve_s()
    }

    /// Whether another step would leave no room for the end of the run.
    pub fn out_of_time(&self) -> bool {
        self.out_of_time_at(self.elapsed())
    }

    fn out_of_time_at(&self, elapsed: f64) -> bool {
        self.limit_s
            .is_some_and(|limit| elapsed + self.reserve() >= limit)
    }

    pub fn record_step(&mut self, seconds: f64) {
        self.steps.push_back(seconds);
        if self.steps.len() > STEP_WINDOW {
            self.steps.pop_front();
        }
        self.state.step_s = self.steps.iter().copied().fold(0.0, f64::max);
    }

    pub fn record_validation(&mut self, seconds: f64) {
        self.state.validation_s = seconds;
    }

    pub fn record_checkpoint(&mut self, seconds: f64) {
        if !self.state.checkpoint_measured {
            self.state.checkpoint_s = 0.0;
            self.state.checkpoint_measured = true;
        }
        self.state.checkpoint_s = self.state.checkpoint_s.max(seconds);
    }

    /// What a checkpoint write will take until one is measured.
    pub fn estimate_checkpoint(&mut self, seconds: f64) {
        if !self.state.checkpoint_measured {
            self.state.checkpoint_s = seconds;
        }
    }

    /// Whether a checkpoint write was measured (in this process or an earlier one).
    pub fn knows_checkpoint_time(&self) -> bool {
        self.state.checkpoint_measured
    }

    /// Stops the clock: what a stop does from here is outside the budget.
    pub fn freeze(&mut self) {
        if self.frozen_s.is_none() {
            self.frozen_s = Some(self.elapsed());
        }
    }

    /// The schedule's position after warm-up: the share of the run's steps done, or
    /// of its time budget when that ends the run sooner (so a time-limited cosine
    /// run still decays to zero), never behind where it stood at the checkpoint.
    pub fn schedule_progress(&mut self, step_progress: f64, total_steps: usize) -> f64 {
        let elapsed = self.elapsed();
        self.schedule_progress_at(step_progress, total_steps, elapsed)
    }

    fn schedule_progress_at(
        &mut self,
        step_progress: f64,
        total_steps: usize,
        elapsed: f64,
    ) -> f64 {
        let same_schedule = self.state.schedule_total_steps == total_steps
            && self.state.schedule_limit_s == self.limit_s;
        let mut progress = step_progress;
        if same_schedule {
            progress = progress.max(self.state.schedule_progress);
        }
        if let Some(limit) = self.limit_s {
            let budget = (limit - self.reserve()).max(1.0);
            progress = progress.max(elapsed / budget);
        }
        let progress = progress.clamp(0.0, 1.0);
        self.state.schedule_progress = progress;
        self.state.schedule_total_steps = total_steps;
        self.state.schedule_limit_s = self.limit_s;
        progress
    }

    /// The state a checkpoint written now keeps.
    pub fn state(&self) -> BudgetState {
        BudgetState {
            elapsed_s: self.elapsed(),
            ..self.state
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(elapsed: f64, limit: f64, reserve: (f64, f64, f64)) -> Budget {
        let mut b = Budget::new(
            Some(Duration::from_secs_f64(limit)),
            BudgetState {
                elapsed_s: elapsed,
                ..BudgetState::default()
            },
        );
        b.record_step(reserve.0);
        b.record_validation(reserve.1);
        b.record_checkpoint(reserve.2);
        b
    }

    #[test]
    fn the_reserve_holds_a_step_the_final_validation_and_two_writes() {
        let b = at(0.0, 10.0, (1.0, 2.0, 0.5));
        assert!((b.reserve() - 4.0).abs() < 1e-9);
        assert!(!b.out_of_time_at(5.9));
        assert!(b.out_of_time_at(6.0));
        // The longest recent step counts, and old ones leave the window.
        let mut b = at(0.0, 10.0, (3.0, 0.0, 0.0));
        assert!((b.reserve() - 3.0).abs() < 1e-9);
        for _ in 0..STEP_WINDOW {
            b.record_step(0.5);
        }
        assert!((b.reserve() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_resumed_budget_counts_the_seconds_of_earlier_processes() {
        // 6 s of a 10 s budget were spent before the checkpoint.
        let saved = at(6.0, 10.0, (1.0, 2.0, 0.5)).state();
        assert!(saved.elapsed_s >= 6.0);
        let resumed = Budget::new(Some(Duration::from_secs(10)), saved);
        assert!(resumed.elapsed() >= 6.0);
        assert!(resumed.reserve() >= 4.0, "the reserve is carried too");
        assert!(resumed.knows_checkpoint_time());
        assert!(resumed.out_of_time(), "6 s spent + 4 s reserve = the limit");
        // The same state without the limit never runs out.
        assert!(!Budget::new(None, saved).out_of_time());
    }

    #[test]
    fn the_schedule_position_continues_and_never_goes_back() {
        let mut b = at(0.0, 11.0, (0.5, 0.5, 0.0));
        // Time ends this run long before its steps: 5 s of a 10 s schedule.
        let p = b.schedule_progress_at(0.01, 1000, 5.0);
        assert!((p - 0.5).abs() < 1e-9, "{p}");
        // Resumed from that state with the elapsed seconds lost (an older
        // checkpoint), the position still does not go back…
        let mut saved = b.state();
        saved.elapsed_s = 0.0;
        let mut r = Budget::new(Some(Duration::from_secs(11)), saved);
        assert!((r.schedule_progress_at(0.02, 1000, 1.0) - 0.5).abs() < 1e-9);
        // …unless the schedule itself changed (another limit), which measures afresh.
        let mut other = Budget::new(Some(Duration::from_secs(101)), saved);
        assert!(other.schedule_progress_at(0.02, 1000, 1.0) < 0.05);
        // Without a limit, the steps alone place it.
        let mut steps = Budget::new(None, BudgetState::default());
        assert!((steps.schedule_progress_at(0.25, 8, 100.0) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn a_measured_write_replaces_the_estimate() {
        let mut b = Budget::new(None, BudgetState::default());
        b.estimate_checkpoint(2.0);
        assert!(!b.knows_checkpoint_time());
        assert!((b.reserve() - 4.0).abs() < 1e-9);
        b.record_checkpoint(0.25);
        b.estimate_checkpoint(2.0);
        assert!(b.knows_checkpoint_time());
        assert!((b.reserve() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_frozen_clock_stands_still() {
        let mut b = Budget::new(None, BudgetState::default());
        b.freeze();
        let t = b.elapsed();
        std::thread::sleep(Duration::from_millis(5));
        assert!((b.elapsed() - t).abs() < f64::EPSILON);
    }
}
