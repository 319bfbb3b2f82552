//! The training worker: dataset → triplet batches → embedder → triplet loss → AdamW,
//! with validation every epoch (the same metric code as `vitrine eval`), checkpoints
//! written atomically, resume, and a typed event for everything that happens.
//!
//! It is a library call that blocks its thread; the CLI prints its events and the
//! dashboard runs it as a separate process and follows `metrics.jsonl`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::average::WeightAverage;
use super::checkpoint_policy::CheckpointPolicy;
use super::collapse::{CollapseChange, CollapseMonitor, StepSignals};
use super::events::{CheckpointKind, NoticeKind, StopReason, TrainEvent};
use super::metrics_log::{MetricsError, MetricsWriter};
use super::optim::learning_rate_at;
use super::rate::RateMeter;
use super::step::{Optimisers, StepError, StepSettings, train_step};
use super::training_data::{Data, prepare_data};
use super::validation::{ValidationError, validate};
use crate::config::Config;
use crate::config::parse_device;
use crate::data::deepfashion::DatasetError;
use crate::data::loader::{LoadError, Prefetcher};
use crate::data::triplets::TripletError;
use crate::eval::Retrieval;
use crate::fsutil::{fnv1a64, write_bytes_atomic};
use crate::model::checkpoint::{self, CheckpointError};
use crate::model::embed_files::EmbedError;
use crate::model::embedder::sorted_vars;
use crate::model::loss::{LossKind, PROXIES_NAME, mean_pairwise_cosine};
use crate::model::{Criterion, Embedder};
use crate::rng::Rng;
use crate::run::checkpoints::{
    self as checkpoint_set, CheckpointFiles, NewCheckpoint, OPTIM_STEP, Recovery,
};
use crate::run::device;
use crate::run::folder::{ControlRequest, RunDir, RunError, RunLock};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Triplets(#[from] TripletError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("the {what} became {value} at step {step}; stopped, the last good checkpoint is kept")]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f32,
    },
    #[error("cannot resume {}: {reason}", run.display())]
    Resume { run: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub use super::job::{Control, TrainJob, TrainOutcome};
pub use crate::run::checkpoints::{CHECKPOINT_FORMAT, CheckpointMeta, sidecar_path};

/// Hash of the settings that shape the weights (a resumed run must match them).
pub fn model_hash(config: &Config) -> String {
    let text = toml::to_string(&config.model.embedder().weights_shape()).unwrap_or_default();
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// The run's `config.toml` text.
fn config_toml(config: &Config) -> Result<String, TrainError> {
    toml::to_string(config).map_err(|e| {
        TrainError::Setting(format!(
            "the settings cannot be saved as the run's config.toml ({e}); paths in them must be valid UTF-8"
        ))
    })
}

pub fn read_meta(checkpoint: &Path) -> Result<CheckpointMeta, TrainError> {
    let path = sidecar_path(checkpoint);
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Resume {
        run: path,
        reason: format!("unreadable checkpoint sidecar: {e}"),
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
    let run = RunDir::new(&job.run);
    let _lock: RunLock = run.lock()?;
    // Refused before anything is written: the existing run's log stays as it was.
    if !job.resume && run.checkpoint(CheckpointKind::Last).exists() {
        return Err(TrainError::Resume {
            run: run.root.clone(),
            reason:
                "it already has checkpoints: pass --resume to continue it, or choose a new --run"
                    .into(),
        });
    }
    // Settings that cannot be saved (a path that is not UTF-8) are refused before the
    // run is touched: an empty config.toml would make `index` use the defaults.
    config_toml(&job.config)?;
    // A request left from an earlier process must not pause or stop this one.
    let _ = std::fs::remove_file(run.control());
    let mut metrics = MetricsWriter::append(&run.metrics())?;
    let mut emit = |event: TrainEvent| -> Result<(), TrainError> {
        metrics.write(&event)?;
        on_event(&event);
        Ok(())
    };
    if job.resume {
        for kind in [CheckpointKind::Last, CheckpointKind::Best] {
            let files = CheckpointFiles::of(&run, kind);
            let recovery = checkpoint_set::recover(&files).map_err(|source| TrainError::Io {
                path: files.weights.clone(),
                source,
            })?;
            if let Recovery::RolledBack { step } = recovery {
                emit(TrainEvent::Notice {
                    step,
                    message: format!(
                        "the {} checkpoint's last write was interrupted; using the complete one of step {step}",
                        match kind {
                            CheckpointKind::Last => "last",
                            CheckpointKind::Best => "best",
                        }
                    ),
                    kind: None,
                })?;
            }
        }
    }
    let mut state = match Session::start(job, &run) {
        Ok(s) => s,
        Err(e) => {
            emit(TrainEvent::Failed {
                step: 0,
                epoch: 0,
                message: e.to_string(),
            })?;
            return Err(e);
        }
    };
    let result = state.run(control, &mut emit);
    let _ = std::fs::remove_file(run.control());
    if let Err(e) = &result {
        emit(TrainEvent::Failed {
            step: state.step,
            epoch: state.epoch,
            message: e.to_string(),
        })?;
    }
    result
}

/// A training process's state between steps.
struct Session<'a> {
    job: &'a TrainJob,
    run: &'a RunDir,
    data: Data,
    device: Device,
    model: Embedder,
    varmap: VarMap,
    optimisers: Optimisers,
    criterion: Criterion,
    step: usize,
    epoch: usize,
    epoch_position: usize,
    checkpoints: CheckpointPolicy,
    last_val: Option<Retrieval>,
    resumed: bool,
    /// Step of the newest validation (a stopping run validates unless it just did).
    validated_at: Option<usize>,
    /// Seconds the newest validation took: what a time limit keeps in reserve.
    validation_seconds: f64,
    /// When this process started the run (the time limit counts from here).
    started: Instant,
    /// Seconds after `started` when the newest epoch-end validation ended.
    validated_seconds: Option<f64>,
    collapse: CollapseMonitor,
    /// The weights' moving average (`train.ema`), which validation and checkpoints use.
    average: Option<WeightAverage>,
}

impl<'a> Session<'a> {
    fn start(job: &'a TrainJob, run: &'a RunDir) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let choice = parse_device(&cfg.train.device).map_err(TrainError::Setting)?;
        let device = device::select(choice)
            .map_err(|e| TrainError::Setting(format!("train.device: {e}")))?;
        let data = prepare_data(job)?;
        let (model, varmap) = Embedder::seeded(cfg.model.embedder(), &device, cfg.train.seed)?;
        if !cfg.model.pretrained.as_os_str().is_empty() {
            let report = checkpoint::load_pretrained_backbone(&varmap, &cfg.model.pretrained)?;
            tracing::info!(
                "loaded {} pretrained tensors from {}",
                report.loaded,
                cfg.model.pretrained.display()
            );
        }
        let criterion = Criterion::new(
            cfg.loss,
            data.classes,
            cfg.model.embedding_dim,
            &device,
            cfg.train.seed,
        )?;
        let optimisers = Optimisers::new(&model, &varmap, &criterion, cfg.train.weight_decay)?;
        let mut session = Self {
            job,
            run,
            data,
            device,
            model,
            varmap,
            optimisers,
            criterion,
            step: 0,
            epoch: 0,
            epoch_position: 0,
            checkpoints: CheckpointPolicy::new(cfg.train.checkpoint_every, None),
            last_val: None,
            resumed: false,
            validated_at: None,
            validation_seconds: 0.0,
            started: Instant::now(),
            validated_seconds: None,
            collapse: CollapseMonitor::default(),
            average: None,
        };
        let last = run.checkpoint(CheckpointKind::Last);
        if job.resume {
            session.restore(&last)?;
        }
        if cfg.train.ema > 0.0 && session.average.is_none() {
            session.average = Some(WeightAverage::new(&session.varmap, cfg.train.ema)?);
        }
        write_bytes_atomic(&run.config(), config_toml(cfg)?.as_bytes()).map_err(|source| {
            TrainError::Io {
                path: run.config(),
                source,
            }
        })?;
        Ok(session)
    }

    fn restore(&mut self, last: &Path) -> Result<(), TrainError> {
        let run = self.run.root.clone();
        if !last.exists() {
            return Err(TrainError::Resume {
                run,
                reason: format!("{} does not exist", last.display()),
            });
        }
        let meta = read_meta(last)?;
        let hash = model_hash(&self.job.config);
        if meta.config_hash != hash {
            return Err(TrainError::Resume {
                run,
                reason: format!(
                    "the checkpoint was trained with another model configuration ({} at {} px, {}-d); use the run's own config.toml",
                    meta.backbone, meta.image_size, meta.embedding_dim
                ),
            });
        }
        checkpoint::load_full(&self.varmap, last)?;
        let fp = checkpoint::fingerprint(&self.varmap)?;
        if fp != meta.fingerprint {
            return Err(TrainError::Resume {
                run,
                reason: "the checkpoint and its .json sidecar disagree (interrupted write?); resume from best.safetensors by copying it over last".into(),
            });
        }
        let optim_path = self.run.optimizer_state();
        let tensors = match candle_core::safetensors::load(&optim_path, &self.device) {
            Ok(tensors) if tensors_step(&tensors) == Some(meta.step) => tensors,
            _ => HashMap::new(),
        };
        let restored = self
            .optimisers
            .model
            .load_state(meta.optimizer_t, |name| tensors.get(name).cloned())?;
        if restored == 0 {
            tracing::warn!("no matching optimizer state; resuming with fresh Adam moments");
        }
        // The weights file holds the average; the live weights resume training.
        if self.job.config.train.ema > 0.0 {
            let mut average = WeightAverage::new(&self.varmap, self.job.config.train.ema)?;
            if !average.restore_live(|name| tensors.get(name).cloned())? {
                tracing::warn!(
                    "no saved live weights; training resumes from the checkpoint's weights"
                );
            }
            self.average = Some(average);
        }
        if let (Some(p), Some(opt)) = (self.criterion.proxies(), &mut self.optimisers.proxies) {
            match tensors.get(PROXIES_NAME) {
                Some(saved) if saved.dims() == p.dims() => {
                    p.set(saved)?;
                    opt.load_state(meta.optimizer_t, |name| tensors.get(name).cloned())?;
                }
                _ => tracing::warn!(
                    "no saved class weights for the {} loss; resuming with fresh ones",
                    self.criterion.config().kind
                ),
            }
        }
        self.step = meta.step;
        self.epoch = meta.epoch;
        self.epoch_position = meta.epoch_position;
        self.checkpoints =
            CheckpointPolicy::new(self.job.config.train.checkpoint_every, meta.best_val_top20);
        self.last_val = meta.val;
        self.resumed = true;
        Ok(())
    }

    fn steps_per_epoch(&self) -> usize {
        self.data.sampler.steps_per_epoch()
    }

    fn total_steps(&self) -> usize {
        let all = self.steps_per_epoch() * self.job.config.train.epochs;
        match self.job.config.train.max_steps {
            0 => all,
            m => m.min(all),
        }
    }

    fn run(
        &mut self,
        control: &Control,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<TrainOutcome, TrainError> {
        self.emit_started(emit)?;
        if !self.resumed {
            let t = Instant::now();
            if let Some((v, val_loss)) = self.validate()? {
                self.validation_seconds = t.elapsed().as_secs_f64();
                emit(TrainEvent::Baseline {
                    val_loss,
                    val_top1: v.at(1),
                    val_top20: v.at(20),
                    val_map_at_r: v.map_at_r,
                })?;
            }
        }
        let mut rate = RateMeter::default();
        while self.epoch < self.job.config.train.epochs {
            if let Some(reason) = self.run_epoch(control, &mut rate, emit)? {
                return self.finish(reason, emit);
            }
        }
        self.finish(StopReason::Finished, emit)
    }

    fn emit_started(
        &self,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let cfg = &self.job.config;
        let params: usize = sorted_vars(&self.varmap)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        let trainable_params: usize = self
            .optimisers
            .trainable
            .iter()
            .map(|v| v.elem_count())
            .sum();
        let sampler = &self.data.sampler;
        let info = device::info(&self.device);
        emit(TrainEvent::Started {
            run: self.run.name(),
            device: device::describe(&self.device),
            device_name: info.name,
            device_detail: info.detail,
            device_memory_bytes: info.memory_bytes,
            device_memory_free_bytes: info.memory_free_bytes,
            backbone: cfg.model.backbone.to_string(),
            image_size: cfg.model.image_size,
            batch: sampler.units_per_step(),
            epochs: cfg.train.epochs,
            steps_per_epoch: self.steps_per_epoch(),
            total_steps: self.total_steps(),
            start_step: self.step,
            resumed: self.resumed,
            loss: cfg.loss.kind.to_string(),
            // The config spelling (`batch_hard`), not the Rust variant name.
            mining: serde_json::to_value(cfg.loss.mining)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            sampler: cfg.sampler().as_str().to_string(),
            batch_images: sampler.images_per_step(),
            params,
            trainable_params,
            train_triplets: sampler.units_per_epoch(),
            val_queries: self.data.val_queries.len(),
            val_gallery: self.data.val_gallery.len(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        })
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
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
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
                    }
                    ControlRequest::Run => break,
                }
            }
            if self.out_of_time() {
                return Ok(Some(StopReason::TimeLimit));
            }
            if !batch.failed.is_empty() {
                emit(TrainEvent::Notice {
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
            let loss = self.train_step(batch, groups, rate, emit)?;
            loss_sum += f64::from(loss);
            loss_n += 1;
            if cfg.train.max_steps > 0 && self.step >= cfg.train.max_steps {
                return Ok(Some(StopReason::MaxSteps));
            }
            if self.checkpoints.last_due(self.step) {
                self.save(CheckpointKind::Last, emit)?;
            }
        }
        // An epoch cut short by a dead decoding thread is an error, not an epoch.
        loader.finish()?;
        let validating = self.validation_due();
        let val = if validating {
            let t = Instant::now();
            let val = self.validate()?;
            self.validation_seconds = t.elapsed().as_secs_f64();
            self.validated_seconds = Some(self.started.elapsed().as_secs_f64());
            val
        } else {
            None
        };
        emit(TrainEvent::Epoch {
            epoch: self.epoch,
            step: self.step,
            train_loss: if loss_n > 0 {
                (loss_sum / loss_n as f64) as f32
            } else {
                f32::NAN
            },
            val_loss: val.as_ref().map_or(f32::NAN, |v| v.1),
            val_top1: val.as_ref().map_or(0.0, |v| v.0.at(1)),
            val_top20: val.as_ref().map_or(0.0, |v| v.0.at(20)),
            val_map_at_r: val.as_ref().map_or(0.0, |v| v.0.map_at_r),
            seconds: epoch_start.elapsed().as_secs_f64(),
        })?;
        self.epoch += 1;
        self.epoch_position = 0;
        if validating {
            self.keep_if_best(val.map(|v| v.0), emit)?;
        }
        self.save(CheckpointKind::Last, emit)?;
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
                .validated_seconds
                .is_none_or(|at| self.started.elapsed().as_secs_f64() - at >= share);
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
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<f32, TrainError> {
        let cfg = &self.job.config;
        let members = groups.first().map_or(0, Vec::len);
        // Member-major, as the loader lays the batch out.
        let images: Vec<usize> = (0..members)
            .flat_map(|m| batch.kept.iter().map(move |&k| groups[k][m]))
            .collect();
        let labels: Vec<u64> = images
            .iter()
            .map(|&i| self.data.ds.images[i].item as u64)
            .collect();
        let classes: Vec<u32> = images
            .iter()
            .map(|&i| self.data.class_of[self.data.ds.images[i].item])
            .collect();
        let side = batch.size as usize;
        let x = Tensor::from_vec(batch.data, batch.n * 3 * side * side, &self.device)?
            .reshape((batch.n, 3, side, side))?;
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
        rate.record(batch.n);
        let images_per_s = rate.per_second();
        emit(TrainEvent::Step {
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
        let margin = (cfg.loss.kind == LossKind::Triplet && !cfg.loss.soft_margin)
            .then_some(cfg.loss.margin);
        let change = self.collapse.observe(StepSignals {
            spread,
            d_ap: stats.mean_ap,
            d_an: stats.mean_an,
            loss,
            margin,
        });
        if let Some(change) = change {
            let (message, kind) = match change {
                CollapseChange::Collapsed(m) => (m, NoticeKind::Collapse),
                CollapseChange::Recovered(m) => (m, NoticeKind::CollapseCleared),
            };
            tracing::warn!("{message}");
            emit(TrainEvent::Notice {
                step: self.step,
                message,
                kind: Some(kind),
            })?;
        }
        Ok(loss)
    }

    /// Warm-up, then the schedule over the run: its steps, or its time limit when that
    /// ends it sooner, so a time-limited cosine run still decays to zero.
    fn learning_rate(&self) -> f64 {
        let cfg = &self.job.config;
        let total = self.total_steps();
        let warmup = cfg.train.warmup_steps;
        let mut progress =
            self.step.saturating_sub(warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
        if let Some(limit) = cfg.time_limit() {
            let budget = (limit.as_secs_f64() - self.validation_seconds).max(1.0);
            progress = progress.max(self.started.elapsed().as_secs_f64() / budget);
        }
        learning_rate_at(
            cfg.train.lr,
            cfg.train.schedule,
            warmup,
            self.step,
            progress.min(1.0),
        )
    }

    /// Whether the time limit leaves no room for another step and the final
    /// validation (as long as the newest one took).
    fn out_of_time(&self) -> bool {
        self.job.config.time_limit().is_some_and(|limit| {
            self.started.elapsed().as_secs_f64() + self.validation_seconds >= limit.as_secs_f64()
        })
    }

    /// Records `val` as the newest validation and saves `best` when it beats it.
    fn keep_if_best(
        &mut self,
        val: Option<Retrieval>,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        self.validated_at = Some(self.step);
        let improved = self.checkpoints.improves_best(val.as_ref());
        self.last_val = val;
        if improved {
            self.save(CheckpointKind::Best, emit)?;
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
    fn finish(
        &mut self,
        reason: StopReason,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<TrainOutcome, TrainError> {
        if self.validated_at != Some(self.step) && self.step > 0 {
            let t = Instant::now();
            if let Some((v, val_loss)) = self.validate()? {
                emit(TrainEvent::Validated {
                    step: self.step,
                    epoch: self.epoch,
                    val_loss,
                    val_top1: v.at(1),
                    val_top20: v.at(20),
                    val_map_at_r: v.map_at_r,
                    seconds: t.elapsed().as_secs_f64(),
                })?;
                self.keep_if_best(Some(v), emit)?;
            }
        }
        if self.checkpoints.last_missing(self.step) {
            self.save(CheckpointKind::Last, emit)?;
        }
        emit(TrainEvent::Done {
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

    fn meta(&self) -> Result<CheckpointMeta, TrainError> {
        let cfg = &self.job.config;
        Ok(CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            epoch: self.epoch,
            epoch_position: self.epoch_position,
            step: self.step,
            best_val_top20: self.checkpoints.best_top20(),
            val: self.last_val.clone(),
            optimizer_t: self.optimisers.model.t,
            fingerprint: checkpoint::fingerprint(&self.varmap)?,
            config_hash: model_hash(cfg),
            backbone: cfg.model.backbone.to_string(),
            image_size: cfg.model.image_size,
            embedding_dim: cfg.model.embedding_dim,
        })
    }

    /// One unit: weights, (for `last`) optimizer moments and class weights, and the
    /// sidecar, put in place together by [`checkpoint_set::write`].
    fn save(
        &mut self,
        kind: CheckpointKind,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        if let Some(average) = &mut self.average {
            average.swap()?;
        }
        let written = self.write_checkpoint(kind);
        if let Some(average) = &mut self.average {
            average.swap()?;
        }
        let path = written?;
        if kind == CheckpointKind::Last {
            self.checkpoints.last_written(self.step);
        }
        emit(TrainEvent::Checkpoint {
            step: self.step,
            epoch: self.epoch,
            kind,
            path: path.display().to_string(),
        })
    }

    /// The checkpoint files of [`Self::save`] from the weights the model holds now.
    fn write_checkpoint(&self, kind: CheckpointKind) -> Result<PathBuf, TrainError> {
        let files = CheckpointFiles::of(self.run, kind);
        let path = files.weights.clone();
        let meta = self.meta()?;
        let weights = checkpoint::serialize(&self.varmap)?;
        let optim = if kind == CheckpointKind::Last {
            // Moments of both optimisers, and the class weights, which live outside
            // the model: resume needs them, search does not.
            let mut state = self.optimisers.model.state();
            if let (Some(p), Some(opt)) = (self.criterion.proxies(), &self.optimisers.proxies) {
                state.extend(opt.state());
                state.push((PROXIES_NAME.into(), p.as_tensor().clone()));
            }
            if let Some(average) = &self.average {
                state.extend(average.live_state());
            }
            let mut tensors: HashMap<String, Tensor> = state
                .into_iter()
                .map(|(n, t)| t.to_device(&Device::Cpu).map(|t| (n, t)))
                .collect::<candle_core::Result<_>>()?;
            tensors.insert(
                OPTIM_STEP.into(),
                Tensor::new(&[self.step as u32], &Device::Cpu)?,
            );
            Some(
                safetensors::tensor::serialize(tensors, None)
                    .map_err(|e| TrainError::Model(e.into()))?,
            )
        } else {
            None
        };
        let new = NewCheckpoint {
            weights: &weights,
            optim: optim.as_deref(),
            meta: &meta,
        };
        checkpoint_set::write(&files, &new)
            .map_err(|(path, source)| TrainError::Io { path, source })?;
        Ok(path)
    }

    /// Val top-k and val loss (eval mode) on the val split, of the weights' average
    /// when there is one; `None` without val pairs.
    fn validate(&mut self) -> Result<Option<(Retrieval, f32)>, TrainError> {
        if let Some(average) = &mut self.average {
            average.swap()?;
        }
        let result = self.validate_current();
        if let Some(average) = &mut self.average {
            average.swap()?;
        }
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

fn tensors_step(tensors: &HashMap<String, Tensor>) -> Option<usize> {
    let v = tensors.get(OPTIM_STEP)?.to_vec1::<u32>().ok()?;
    v.first().map(|&s| s as usize)
}
