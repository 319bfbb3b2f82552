//! The training worker: dataset → triplet batches → embedder → triplet loss → AdamW,
//! with validation every epoch (the same metric code as `vitrine eval`), checkpoints
//! written atomically, resume, and a typed event for everything that happens.
//!
//! It is a library call that blocks its thread; the CLI prints its events and the
//! dashboard runs it as a separate process and follows `metrics.jsonl`.

use std::time::{Duration, Instant};

use super::collapse::StepSignals;
use super::error::TrainError;
use super::events::{NoticeKind, StopReason, TrainEvent, ValMetrics};
use super::job::{Control, TrainJob, TrainOutcome};
use super::metrics_log::MetricsWriter;
use super::optim::learning_rate_at;
use super::rate::RateMeter;
use super::resume;
use super::session::{EventSink, Prepared, Session};
use super::step::{StepError, StepSettings, train_step};
use super::training_data::BatchTensors;
use super::validation::validate;
use crate::data::loader::Prefetcher;
use crate::eval::Retrieval;
use crate::fsutil::write_bytes_atomic;
use crate::model::checkpoint;
use crate::model::loss::mean_pairwise_cosine;
use crate::rng::Rng;
use crate::run::folder::CheckpointKind;
use crate::run::folder::{ControlRequest, RunDir};

/// The run's `config.toml` text.
fn config_toml(config: &crate::config::Config) -> Result<String, TrainError> {
    // A PostgreSQL password given in a config file never lands in the run folder.
    let mut config = config.clone();
    config.index.pg_url = crate::config::redact_pg_url(&config.index.pg_url);
    toml::to_string(&config).map_err(|e| {
        TrainError::Setting(format!(
            "the settings cannot be saved as the run's config.toml ({e}); paths in them must be valid UTF-8"
        ))
    })
}

/// Trains `job`, calling `on_event` for every event (also appended to the run's
/// `metrics.jsonl`). Returns when all epochs ran, `max_steps` was reached or a stop
/// was requested — each with a checkpoint written.
pub fn train(
    job: &TrainJob,
    control: &Control,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome, TrainError> {
    // Settings that cannot be saved (a path that is not UTF-8) are refused before the
    // run is touched: an empty config.toml would make `index` use the defaults.
    let settings = resume::run_settings(job);
    let settings_text = config_toml(&settings)?;
    // The data, the device and the model are checked before the run folder is made or
    // written: a mistyped --data leaves no run behind.
    let mut prepared = Prepared::new(job)?;
    let run = RunDir::new(&job.run);
    let _lock = run.lock()?;
    let (notices, resumed) = resume::begin(job, &run, &settings, &mut prepared)?;
    // A request left from an earlier process must not pause or stop this one.
    let _ = std::fs::remove_file(run.control());
    let mut sink = EventSink::new(MetricsWriter::append(&run.metrics())?, on_event);
    for notice in notices {
        sink.emit(notice)?;
    }
    write_bytes_atomic(&run.config(), settings_text.as_bytes()).map_err(|source| {
        TrainError::Io {
            path: run.config(),
            source,
        }
    })?;
    let mut state = Session::new(job, &run, prepared, sink)?;
    if let Some(r) = resumed {
        state.continue_from(r);
    }
    let result = state.run(control);
    let _ = std::fs::remove_file(run.control());
    if let Err(e) = &result {
        state.emit(TrainEvent::Failed {
            step: state.step,
            epoch: state.epoch,
            message: e.to_string(),
        })?;
    }
    result
}

impl Session<'_> {
    fn max_steps_reached(&self) -> bool {
        let max = self.job.config.train.max_steps;
        max > 0 && self.step >= max
    }

    /// Moves past an epoch whose end is done; false when no epoch is left.
    fn next_epoch(&mut self) -> bool {
        if self.epoch_done {
            if self.epoch + 1 >= self.job.config.train.epochs {
                return false;
            }
            self.epoch += 1;
            self.epoch_position = 0;
            self.epoch_done = false;
        }
        self.epoch < self.job.config.train.epochs
    }

    fn run(&mut self, control: &Control) -> Result<TrainOutcome, TrainError> {
        self.emit_started()?;
        if !self.changes.is_empty() {
            self.emit(TrainEvent::SettingsChanged {
                step: self.step,
                changes: self.changes.clone(),
            })?;
        }
        // Every start says where the collapse monitor stands (a reader's warning from
        // an earlier process is cleared by `started`).
        if let Some(warning) = self.collapse.warning() {
            self.emit(TrainEvent::Notice {
                step: self.step,
                message: warning.to_string(),
                kind: Some(NoticeKind::Collapse),
            })?;
        }
        if !self.resumed {
            let t = Instant::now();
            if let Some((v, val_loss)) = self.validate()? {
                self.budget.record_validation(t.elapsed().as_secs_f64());
                self.emit(TrainEvent::Baseline(ValMetrics {
                    val_loss,
                    val_top1: v.at(1),
                    val_top20: v.at(20),
                    val_map_at_r: v.map_at_r,
                }))?;
            }
        }
        if self.job.config.time_limit().is_some() && !self.budget.knows_checkpoint_time() {
            // Until a write is measured, one is taken to cost what serialising the
            // weights does (the bulk of it).
            let t = Instant::now();
            checkpoint::serialize(&self.varmap)?;
            self.budget.estimate_checkpoint(t.elapsed().as_secs_f64());
        }
        let mut rate = RateMeter::default();
        while self.next_epoch() {
            // Checked before any step: a run resumed at its limit trains no more.
            if self.max_steps_reached() {
                return self.finish(StopReason::MaxSteps);
            }
            if self.budget.out_of_time() {
                return self.finish(StopReason::TimeLimit);
            }
            if let Some(reason) = self.run_epoch(control, &mut rate)? {
                return self.finish(reason);
            }
        }
        self.finish(StopReason::Finished)
    }

    /// The batches of the current epoch from the current position, each with its
    /// augmentation seed (a pure function of seed, epoch and batch number, so a
    /// resumed run augments exactly as the original would have).
    fn epoch_batches(&self) -> Vec<(Vec<Vec<usize>>, Option<u64>)> {
        let cfg = &self.job.config;
        let per_step = self.data.sampler.units_per_step();
        let first = self.epoch_position / per_step;
        let augment = cfg.augment.enabled;
        self.data
            .sampler
            .epoch(self.epoch as u64)
            .into_iter()
            .enumerate()
            .skip(first)
            .map(|(b, groups)| {
                let seed = augment.then(|| {
                    Rng::derive(cfg.train.seed, &[self.epoch as u64, b as u64, 0xa06]).next_u64()
                });
                (groups, seed)
            })
            .collect()
    }

    /// One epoch from the current position; `Some(reason)` when the run must stop.
    fn run_epoch(
        &mut self,
        control: &Control,
        rate: &mut RateMeter,
    ) -> Result<Option<StopReason>, TrainError> {
        let cfg = &self.job.config;
        let epoch_start = Instant::now();
        let per_step = self.data.sampler.units_per_step();
        let batches = self.epoch_batches();
        let requests = batches
            .iter()
            .map(|(groups, seed)| {
                let specs = groups
                    .iter()
                    .map(|g| g.iter().map(|&i| self.data.ds.spec(i)).collect())
                    .collect();
                (specs, *seed)
            })
            .collect();
        // A step's time runs from the end of the previous one: loading counts.
        let mut tick = Instant::now();
        let mut loader = Prefetcher::spawn_augmented(requests, self.data.loader, cfg.augment)?;
        let (mut loss_sum, mut loss_n) = (0f64, 0usize);
        for (batch, (groups, _)) in loader.by_ref().zip(&batches) {
            // One read of the control file per step (and per wait while paused).
            loop {
                match self.request(control) {
                    ControlRequest::Stop => return Ok(Some(StopReason::Interrupted)),
                    ControlRequest::Pause => {
                        std::thread::sleep(Duration::from_millis(50));
                        rate.pause();
                        tick = Instant::now();
                    }
                    ControlRequest::Run => break,
                }
            }
            if self.budget.out_of_time() {
                return Ok(Some(StopReason::TimeLimit));
            }
            if !batch.failed.is_empty() {
                self.emit(TrainEvent::Notice {
                    step: self.step,
                    message: format!(
                        "skipped {} unreadable images (first: {})",
                        batch.failed.len(),
                        batch.failed[0]
                    ),
                    kind: None,
                })?;
            }
            self.epoch_position += per_step;
            if batch.kept.len() < 2 {
                continue;
            }
            let loss = self.train_step(batch, groups, rate)?;
            self.budget.record_step(tick.elapsed().as_secs_f64());
            loss_sum += f64::from(loss);
            loss_n += 1;
            if self.max_steps_reached() {
                return Ok(Some(StopReason::MaxSteps));
            }
            if self.checkpoints.last_due(self.step) {
                self.save(CheckpointKind::Last)?;
            }
            tick = Instant::now();
        }
        // An epoch cut short by a dead decoding thread is an error, not an epoch.
        loader.finish()?;
        let validating = self.validation_due();
        let val = if validating {
            let t = Instant::now();
            let val = self.validate()?;
            self.budget.record_validation(t.elapsed().as_secs_f64());
            self.validated_s = Some(self.budget.elapsed());
            val
        } else {
            None
        };
        self.emit(TrainEvent::Epoch {
            epoch: self.epoch,
            step: self.step,
            // NaN (`null`): no step of this epoch was left to train.
            train_loss: if loss_n > 0 {
                (loss_sum / loss_n as f64) as f32
            } else {
                f32::NAN
            },
            // No val split, or no validation due: NaN, written `null` ("none"), not a
            // 0% that looks measured.
            val: val.as_ref().map_or(ValMetrics::NONE, |v| ValMetrics {
                val_loss: v.1,
                val_top1: v.0.at(1),
                val_top20: v.0.at(20),
                val_map_at_r: v.0.map_at_r,
            }),
            seconds: epoch_start.elapsed().as_secs_f64(),
        })?;
        self.epoch_done = true;
        if validating {
            self.keep_if_best(val.map(|v| v.0))?;
        }
        self.save(CheckpointKind::Last)?;
        Ok(None)
    }

    /// Whether this epoch's end validates: always with `train.validations = 0`, else
    /// once 1/N of the run's time limit (or, without one, of its steps) has passed
    /// since the last validation, so the short epochs of a small dataset do not spend
    /// the run validating.
    fn validation_due(&self) -> bool {
        let cfg = &self.job.config.train;
        if cfg.validations == 0 {
            return true;
        }
        if let Some(limit) = self.job.config.time_limit() {
            let share = limit.as_secs_f64() / cfg.validations as f64;
            return self
                .validated_s
                .is_none_or(|at| self.budget.elapsed() - at >= share);
        }
        let every_steps = self.total_steps().div_ceil(cfg.validations).max(1);
        self.step - self.validated_at.unwrap_or(0) >= every_steps
    }

    /// Forward, loss, backward and update on one loaded batch; returns the loss.
    fn train_step(
        &mut self,
        batch: crate::data::loader::Batch,
        groups: &[Vec<usize>],
        rate: &mut RateMeter,
    ) -> Result<f32, TrainError> {
        let cfg = &self.job.config;
        let n = batch.n;
        let BatchTensors { x, labels, classes } =
            self.data.batch_tensors(batch, groups, &self.device)?;
        let lr = self.learning_rate();
        self.model
            .set_dropout_stream(cfg.train.seed, self.step as u64);
        let settings = StepSettings {
            lr,
            proxy_lr_scale: cfg.loss.proxy_lr_scale,
            grad_clip: cfg.train.grad_clip,
        };
        let report = train_step(
            &self.model,
            &self.criterion,
            &mut self.optimisers,
            &x,
            &labels,
            &classes,
            settings,
            None,
        )
        .map_err(|e| match e {
            StepError::NonFinite { what, value } => TrainError::NonFinite {
                step: self.step,
                what,
                value,
                checkpoint: Some(self.run.checkpoint(CheckpointKind::Last)).filter(|p| p.is_file()),
            },
            StepError::Model(e) => TrainError::Model(e),
        })?;
        let (stats, loss, grad_norm) = (report.stats, report.loss, report.grad_norm);
        let (dim, host) = crate::model::loss::host_rows(&report.embeddings)?;
        let spread = mean_pairwise_cosine(&host, dim);
        self.step += 1;
        if let Some(average) = &mut self.average {
            average.update(self.step)?;
        }
        rate.record(n);
        let images_per_s = rate.per_second();
        self.emit(TrainEvent::Step {
            step: self.step,
            epoch: self.epoch,
            loss,
            active: stats.active,
            d_ap: stats.mean_ap,
            d_an: stats.mean_an,
            lr,
            grad_norm,
            spread: spread.is_finite().then_some(spread),
            triplets_per_s: images_per_s / 3.0,
            images_per_s: Some(images_per_s),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        })?;
        let signals = StepSignals {
            spread,
            d_ap: stats.mean_ap,
            d_an: stats.mean_an,
            loss,
            margin: StepSignals::hinge_margin(&cfg.loss),
        };
        if let Some(notice) = self.collapse.notice(self.step, signals) {
            self.emit(notice)?;
        }
        Ok(loss)
    }

    /// Warm-up, then the schedule over the run: its steps, or its time limit when that
    /// ends it sooner, so a time-limited cosine run still decays to zero.
    fn learning_rate(&mut self) -> f64 {
        let cfg = &self.job.config;
        let total = self.total_steps();
        let warmup = cfg.train.warmup_steps;
        let by_steps =
            self.step.saturating_sub(warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
        let progress = self.budget.schedule_progress(by_steps, total);
        learning_rate_at(
            cfg.train.lr,
            cfg.train.schedule,
            warmup,
            self.step,
            progress,
        )
    }

    /// Records `val` as the newest validation and saves `best` when it beats it.
    fn keep_if_best(&mut self, val: Option<Retrieval>) -> Result<(), TrainError> {
        self.validated_at = Some(self.step);
        let improved = self.checkpoints.improves_best(val.as_ref());
        self.last_val = val;
        if improved {
            self.save(CheckpointKind::Best)?;
        }
        Ok(())
    }

    /// What this process's flags and the run's control file ask for; a stop wins.
    fn request(&self, control: &Control) -> ControlRequest {
        if control.stop_requested() {
            return ControlRequest::Stop;
        }
        match self.run.read_control() {
            ControlRequest::Run if control.is_paused() => ControlRequest::Pause,
            file => file,
        }
    }

    /// Ends the run: a run stopped between epochs validates once (so `best` exists
    /// and `vitrine index` works right away), then writes `last`.
    fn finish(&mut self, reason: StopReason) -> Result<TrainOutcome, TrainError> {
        // What a stop does from here is not training: a resumed run gets the budget
        // this one had left.
        self.budget.freeze();
        if self.validated_at != Some(self.step) && self.step > 0 {
            let t = Instant::now();
            if let Some((v, val_loss)) = self.validate()? {
                self.budget.record_validation(t.elapsed().as_secs_f64());
                self.emit(TrainEvent::Validated {
                    step: self.step,
                    epoch: self.epoch,
                    val: ValMetrics {
                        val_loss,
                        val_top1: v.at(1),
                        val_top20: v.at(20),
                        val_map_at_r: v.map_at_r,
                    },
                    seconds: t.elapsed().as_secs_f64(),
                })?;
                self.keep_if_best(Some(v))?;
            }
        }
        if self.checkpoints.last_missing(self.step) {
            self.save(CheckpointKind::Last)?;
        }
        self.emit(TrainEvent::Done {
            step: self.step,
            epoch: self.epoch,
            reason,
            best_val_top20: self.checkpoints.best_top20().unwrap_or(f64::NAN),
            seconds: self.started.elapsed().as_secs_f64(),
        })?;
        Ok(TrainOutcome {
            reason,
            step: self.step,
            best_val_top20: self.checkpoints.best_top20(),
            last_val: self.last_val.clone(),
        })
    }

    /// Val top-k and val loss (eval mode) on the val split, of the weights' average
    /// when there is one; `None` without val pairs.
    fn validate(&mut self) -> Result<Option<(Retrieval, f32)>, TrainError> {
        self.swap_average()?;
        let result = self.validate_current();
        self.swap_average()?;
        result
    }

    fn validate_current(&self) -> Result<Option<(Retrieval, f32)>, TrainError> {
        crate::fsutil::crash_point("validation");
        validate(
            &self.model,
            &self.data.ds,
            &self.data.val_queries,
            &self.data.val_gallery,
            self.data.loader,
            &self.device,
            self.job.config.loss.margin,
        )
        .map_err(TrainError::from)
    }
}
