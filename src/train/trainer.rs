//! The training worker: dataset → triplet batches → embedder → triplet loss → AdamW,
//! with validation every epoch (the same metric code as `vitrine eval`), checkpoints
//! written atomically, resume, and a typed event for everything that happens.
//!
//! It is a library call that blocks its thread; the CLI prints its events and the
//! dashboard runs it as a separate process and follows `metrics.jsonl`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::average::WeightAverage;
use super::budget::{Budget, BudgetState};
use super::checkpoint_policy::CheckpointPolicy;
use super::collapse::{CollapseChange, CollapseMonitor, StepSignals};
use super::events::{
    CheckpointKind, NoticeKind, PretrainedWeights, RunStarted, SettingChange, StopReason,
    TrainEvent, ValMetrics,
};
use super::metrics_log::{MetricsError, MetricsWriter};
use super::optim::learning_rate_at;
use super::rate::RateMeter;
use super::resume::{self, Resumed};
use super::step::{Optimisers, StepError, StepSettings, train_step};
use super::training_data::{Data, prepare_data};
use super::validation::{ValidationError, validate};
use crate::config::parse_device;
use crate::data::deepfashion::DatasetError;
use crate::data::loader::{LoadError, Prefetcher};
use crate::data::triplets::TripletError;
use crate::eval::Retrieval;
use crate::fsutil::write_bytes_atomic;
use crate::model::checkpoint::{self, CheckpointError};
use crate::model::embed_files::EmbedError;
use crate::model::embedder::sorted_vars;
use crate::model::loss::{LossKind, mean_pairwise_cosine};
use crate::model::{Criterion, Embedder};
use crate::rng::Rng;
use crate::run::device;
use crate::run::folder::{ControlRequest, RunDir, RunError};
use crate::weights::{HubCache, Pretrained, WeightsError};

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
    Weights(#[from] WeightsError),
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
    #[error("the {what} became {value} at step {step}; stopped, {}", match checkpoint {
        Some(p) => format!("the last good checkpoint is kept ({})", p.display()),
        None => "before any checkpoint was written".into(),
    })]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f32,
        /// The run's `last` checkpoint, when it has one.
        checkpoint: Option<PathBuf>,
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
pub use super::resume::{model_hash, read_meta};
pub use crate::run::checkpoints::{CHECKPOINT_FORMAT, CheckpointMeta, sidecar_path};

/// `model.pretrained` as `(what it names, the file)`: a path as it is, a Hub repo
/// from the Hugging Face cache (verified, no network; the error names the command
/// that fetches it).
fn pretrained_file(
    config: &crate::config::Config,
) -> Result<Option<(String, PathBuf)>, TrainError> {
    let source = Pretrained::parse(&config.model.pretrained)
        .map_err(|e| TrainError::Setting(format!("model.pretrained: {e}")))?;
    Ok(match source {
        None => None,
        Some(Pretrained::File(path)) => Some((path.display().to_string(), path)),
        Some(Pretrained::Hub(r)) => {
            let found = HubCache::from_env()?.resolve(&r)?;
            Some((Pretrained::Hub(r).to_string(), found.path))
        }
    })
}

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
    // Refused before anything is written: the existing run's log stays as it was.
    if !job.resume && run.checkpoint(CheckpointKind::Last).exists() {
        return Err(TrainError::Resume {
            run: run.root.clone(),
            reason:
                "it already has checkpoints: pass --resume to continue it, or choose a new --run"
                    .into(),
        });
    }
    let (notices, resumed) = if job.resume {
        let notices = resume::recover(&run)?;
        match resume::restore(&run, &settings, &mut prepared) {
            Ok(r) => (notices, Some(r)),
            // A refusal leaves the run as it was: nothing it cannot honour is logged.
            Err(e @ TrainError::Resume { .. }) => return Err(e),
            Err(e) => {
                MetricsWriter::append(&run.metrics())?.write(&TrainEvent::Failed {
                    step: 0,
                    epoch: 0,
                    message: e.to_string(),
                })?;
                return Err(e);
            }
        }
    } else {
        (Vec::new(), None)
    };
    // A request left from an earlier process must not pause or stop this one.
    let _ = std::fs::remove_file(run.control());
    let mut metrics = MetricsWriter::append(&run.metrics())?;
    let mut emit = |event: TrainEvent| -> Result<(), TrainError> {
        metrics.write(&event)?;
        on_event(&event);
        Ok(())
    };
    for notice in notices {
        emit(notice)?;
    }
    write_bytes_atomic(&run.config(), settings_text.as_bytes()).map_err(|source| {
        TrainError::Io {
            path: run.config(),
            source,
        }
    })?;
    let mut state = Session::new(job, &run, prepared, resumed)?;
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

/// What a run needs that does not touch its folder: built, and so checked, first.
pub(super) struct Prepared {
    pub(super) data: Data,
    pub(super) device: Device,
    pub(super) model: Embedder,
    pub(super) varmap: VarMap,
    pub(super) optimisers: Optimisers,
    pub(super) criterion: Criterion,
    /// What the backbone was loaded from, for the started event.
    pub(super) pretrained: Option<PretrainedWeights>,
    /// The weights' moving average (`train.ema`), set by a resume that restored one.
    pub(super) average: Option<WeightAverage>,
}

impl Prepared {
    fn new(job: &TrainJob) -> Result<Self, TrainError> {
        let cfg = &job.config;
        // First, before any data is read: weights that are not there (a Hub repo
        // not pulled yet) fail the run at once, as a `failed` event the dashboard
        // shows. A resumed run's checkpoint holds every weight, so it needs none.
        let pretrained = if job.resume {
            None
        } else {
            pretrained_file(cfg)?
        };
        let choice = parse_device(&cfg.train.device).map_err(TrainError::Setting)?;
        let device = device::select(choice)
            .map_err(|e| TrainError::Setting(format!("train.device: {e}")))?;
        let data = prepare_data(job)?;
        let (model, varmap) = Embedder::seeded(cfg.model.embedder(), &device, cfg.train.seed)?;
        let pretrained = match pretrained {
            Some((source, file)) => {
                let report = checkpoint::load_pretrained_backbone(&varmap, &file)?;
                tracing::info!(
                    "loaded {} pretrained tensors from {source} ({})",
                    report.loaded,
                    file.display()
                );
                Some(PretrainedWeights {
                    source,
                    file: file.display().to_string(),
                    tensors: report.loaded,
                })
            }
            None => None,
        };
        let criterion = Criterion::new(
            cfg.loss,
            data.classes,
            cfg.model.embedding_dim,
            &device,
            cfg.train.seed,
        )?;
        let optimisers = Optimisers::new(&model, &varmap, &criterion, cfg.train.weight_decay)?;
        Ok(Self {
            data,
            device,
            model,
            varmap,
            optimisers,
            criterion,
            pretrained,
            average: None,
        })
    }
}

/// A training process's state between steps.
pub(super) struct Session<'a> {
    pub(super) job: &'a TrainJob,
    pub(super) run: &'a RunDir,
    data: Data,
    pub(super) device: Device,
    model: Embedder,
    pub(super) varmap: VarMap,
    pub(super) optimisers: Optimisers,
    pub(super) criterion: Criterion,
    pub(super) step: usize,
    /// Epoch of the newest step (from 0, as in the events), the sampler's units of it
    /// done, and whether its end (validation) is done.
    pub(super) epoch: usize,
    pub(super) epoch_position: usize,
    pub(super) epoch_done: bool,
    pub(super) checkpoints: CheckpointPolicy,
    pub(super) last_val: Option<Retrieval>,
    pub(super) resumed: bool,
    /// Settings a resume changed (recorded once the run has started).
    pub(super) changes: Vec<SettingChange>,
    /// Step of the newest validation (a stopping run validates unless it just did).
    pub(super) validated_at: Option<usize>,
    /// The time limit over all the run's processes, and the schedule's position.
    pub(super) budget: Budget,
    /// When this process started (the events' `elapsed_s` and `seconds`).
    started: Instant,
    pub(super) collapse: CollapseMonitor,
    /// What the backbone was loaded from, for the started event.
    pretrained: Option<PretrainedWeights>,
    /// Budget seconds (over the run's processes) when the newest epoch-end
    /// validation ended: `train.validations` spreads them over a time limit.
    pub(super) validated_s: Option<f64>,
    /// The weights' moving average (`train.ema`), which validation and checkpoints use.
    pub(super) average: Option<WeightAverage>,
}

impl<'a> Session<'a> {
    fn new(
        job: &'a TrainJob,
        run: &'a RunDir,
        prepared: Prepared,
        resumed: Option<Resumed>,
    ) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let Prepared {
            data,
            device,
            model,
            varmap,
            optimisers,
            criterion,
            pretrained,
            average,
        } = prepared;
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
            epoch_done: false,
            checkpoints: CheckpointPolicy::new(cfg.train.checkpoint_every, None),
            last_val: None,
            resumed: false,
            changes: Vec::new(),
            validated_at: None,
            budget: Budget::new(cfg.time_limit(), BudgetState::default()),
            started: Instant::now(),
            collapse: CollapseMonitor::default(),
            pretrained,
            validated_s: None,
            average,
        };
        if let Some(r) = resumed {
            session.continue_from(r);
        }
        if cfg.train.ema > 0.0 && session.average.is_none() {
            session.average = Some(WeightAverage::new(&session.varmap, cfg.train.ema)?);
        }
        Ok(session)
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

    fn run(
        &mut self,
        control: &Control,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<TrainOutcome, TrainError> {
        self.emit_started(emit)?;
        if !self.changes.is_empty() {
            emit(TrainEvent::SettingsChanged {
                step: self.step,
                changes: self.changes.clone(),
            })?;
        }
        // Every start says where the collapse monitor stands (a reader's warning from
        // an earlier process is cleared by `started`).
        if let Some(warning) = self.collapse.warning() {
            emit(TrainEvent::Notice {
                step: self.step,
                message: warning.to_string(),
                kind: Some(NoticeKind::Collapse),
            })?;
        }
        if !self.resumed {
            let t = Instant::now();
            if let Some((v, val_loss)) = self.validate()? {
                self.budget.record_validation(t.elapsed().as_secs_f64());
                emit(TrainEvent::Baseline(ValMetrics {
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
                return self.finish(StopReason::MaxSteps, emit);
            }
            if self.budget.out_of_time() {
                return self.finish(StopReason::TimeLimit, emit);
            }
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
        emit(TrainEvent::Started(RunStarted {
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
            pretrained: self.pretrained.clone(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }))
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
            self.budget.record_step(tick.elapsed().as_secs_f64());
            loss_sum += f64::from(loss);
            loss_n += 1;
            if self.max_steps_reached() {
                return Ok(Some(StopReason::MaxSteps));
            }
            if self.checkpoints.last_due(self.step) {
                self.save(CheckpointKind::Last, emit)?;
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
        emit(TrainEvent::Epoch {
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
        // What a stop does from here is not training: a resumed run gets the budget
        // this one had left.
        self.budget.freeze();
        if self.validated_at != Some(self.step) && self.step > 0 {
            let t = Instant::now();
            if let Some((v, val_loss)) = self.validate()? {
                self.budget.record_validation(t.elapsed().as_secs_f64());
                emit(TrainEvent::Validated {
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

    /// Val top-k and val loss (eval mode) on the val split, of the weights' average
    /// when there is one; `None` without val pairs.
    fn validate(&mut self) -> Result<Option<(Retrieval, f32)>, TrainError> {
        self.swap_average()?;
        let result = self.validate_current();
        self.swap_average()?;
        result
    }

    /// Exchanges the model's weights and their average (if any): once to evaluate or
    /// save the average, once more to go back to training.
    pub(super) fn swap_average(&mut self) -> Result<(), TrainError> {
        if let Some(average) = &mut self.average {
            average.swap()?;
        }
        Ok(())
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
