//! A training process's state, as the loop (`trainer.rs`) and checkpointing
//! (`resume.rs`) share it: what a run prepares before its folder is touched
//! ([`Prepared`]: data, device, model, optimisers), and the [`Session`] built from it.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;

use super::average::WeightAverage;
use super::budget::{Budget, BudgetState};
use super::checkpoint_policy::CheckpointPolicy;
use super::collapse::CollapseMonitor;
use super::error::TrainError;
use super::events::{PretrainedWeights, RunStarted, SettingChange, TrainEvent};
use super::job::TrainJob;
use super::metrics_log::MetricsWriter;
use super::step::Optimisers;
use super::training_data::{Data, prepare_data};
use crate::config::parse_device;
use crate::eval::Retrieval;
use crate::model::checkpoint;
use crate::model::embedder::sorted_vars;
use crate::model::{Criterion, Embedder};
use crate::run::device;
use crate::run::folder::RunDir;
use crate::weights::{HubCache, Pretrained};

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
    pub(super) fn new(job: &TrainJob) -> Result<Self, TrainError> {
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

/// Where a run's events go: appended to its `metrics.jsonl`, then handed to the
/// caller.
pub(super) struct EventSink<'a> {
    metrics: MetricsWriter,
    on_event: &'a mut dyn FnMut(&TrainEvent),
}

impl<'a> EventSink<'a> {
    pub(super) fn new(metrics: MetricsWriter, on_event: &'a mut dyn FnMut(&TrainEvent)) -> Self {
        Self { metrics, on_event }
    }

    pub(super) fn emit(&mut self, event: TrainEvent) -> Result<(), TrainError> {
        self.metrics.write(&event)?;
        (self.on_event)(&event);
        Ok(())
    }
}

/// A training process's state between steps.
pub(super) struct Session<'a> {
    pub(super) job: &'a TrainJob,
    pub(super) run: &'a RunDir,
    /// Where every event goes ([`Session::emit`]).
    sink: EventSink<'a>,
    pub(super) data: Data,
    pub(super) device: Device,
    pub(super) model: Embedder,
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
    pub(super) started: Instant,
    pub(super) collapse: CollapseMonitor,
    /// What the backbone was loaded from, for the started event.
    pub(super) pretrained: Option<PretrainedWeights>,
    /// Budget seconds (over the run's processes) when the newest epoch-end
    /// validation ended: `train.validations` spreads them over a time limit.
    pub(super) validated_s: Option<f64>,
    /// The weights' moving average (`train.ema`), which validation and checkpoints use.
    pub(super) average: Option<WeightAverage>,
}

impl<'a> Session<'a> {
    /// A session at the run's start; a resume then moves it to where its checkpoint
    /// stopped ([`Session::continue_from`]).
    pub(super) fn new(
        job: &'a TrainJob,
        run: &'a RunDir,
        prepared: Prepared,
        sink: EventSink<'a>,
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
            sink,
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
        if cfg.train.ema > 0.0 && session.average.is_none() {
            session.average = Some(WeightAverage::new(&session.varmap, cfg.train.ema)?);
        }
        Ok(session)
    }

    /// Records `event` in the run's log and hands it to the caller.
    pub(super) fn emit(&mut self, event: TrainEvent) -> Result<(), TrainError> {
        self.sink.emit(event)
    }

    pub(super) fn steps_per_epoch(&self) -> usize {
        self.data.sampler.steps_per_epoch()
    }

    pub(super) fn total_steps(&self) -> usize {
        let all = self.steps_per_epoch() * self.job.config.train.epochs;
        match self.job.config.train.max_steps {
            0 => all,
            m => m.min(all),
        }
    }

    pub(super) fn emit_started(&mut self) -> Result<(), TrainError> {
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
        self.emit(TrainEvent::Started(RunStarted {
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

    /// Exchanges the model's weights and their average (if any): once to evaluate or
    /// save the average, once more to go back to training.
    pub(super) fn swap_average(&mut self) -> Result<(), TrainError> {
        if let Some(average) = &mut self.average {
            average.swap()?;
        }
        Ok(())
    }
}
