//! The training worker: dataset → triplet batches → embedder → triplet loss → AdamW,
//! with validation every epoch (the same metric code as `vitrine eval`), checkpoints
//! written atomically, resume, and a typed event for everything that happens.
//!
//! It is a library call that blocks its thread; the CLI prints its events and the
//! dashboard runs it as a separate process and follows `metrics.jsonl`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_nn::{ModuleT, VarMap};
use serde::{Deserialize, Serialize};

use super::device::{self, parse_device};
use super::events::{CheckpointKind, StopReason, TrainEvent};
use super::metrics_log::{MetricsError, MetricsWriter};
use super::optim::{AdamW, clip_grad_norm, learning_rate};
use super::run_dir::{ControlRequest, RunDir, RunError, RunLock};
use crate::config::Config;
use crate::data::deepfashion::{Dataset, DatasetError, LoadOptions, Source, Split};
use crate::data::loader::{ImageSpec, LoadError, LoaderConfig, Prefetcher};
use crate::data::triplets::{TripletError, TripletSampler};
use crate::eval::{self, Retrieval};
use crate::fsutil::{fnv1a64, write_bytes_atomic};
use crate::index::embed::{EmbedError, embed_images};
use crate::model::checkpoint::{self, CheckpointError};
use crate::model::embedder::sorted_vars;
use crate::model::{Embedder, TripletLoss};

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
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("the loss became {value} at step {step}; stopped, the last good checkpoint is kept")]
    NonFinite { step: usize, value: f32 },
    #[error("cannot resume {}: {reason}", run.display())]
    Resume { run: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

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

/// Saved beside (and inside) every checkpoint; what `--resume` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    /// Epoch in progress (0-based) and triplets of it already trained.
    pub epoch: usize,
    pub epoch_position: usize,
    /// Optimizer steps done.
    pub step: usize,
    pub best_val_top20: Option<f64>,
    pub val: Option<Retrieval>,
    pub optimizer_t: u64,
    pub fingerprint: String,
    pub config_hash: String,
    pub backbone: String,
    pub image_size: u32,
    pub embedding_dim: usize,
}

pub const CHECKPOINT_FORMAT: u32 = 1;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    pub reason: StopReason,
    pub step: usize,
    pub best_val_top20: Option<f64>,
    pub last_val: Option<Retrieval>,
}

/// Hash of the settings that shape the weights (a resumed run must match them).
pub fn model_hash(config: &Config) -> String {
    let text = toml::to_string(&config.model.embedder()).unwrap_or_default();
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// The sidecar JSON of a checkpoint (`last.safetensors` → `last.json`).
pub fn sidecar_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("json")
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

/// Everything the loop needs about the data, built once.
struct Data {
    ds: Dataset,
    sampler: TripletSampler,
    val_queries: Vec<usize>,
    val_gallery: Vec<usize>,
    loader: LoaderConfig,
}

fn prepare_data(job: &TrainJob) -> Result<Data, TrainError> {
    let cfg = &job.config;
    let ds = Dataset::open(
        &job.data,
        LoadOptions {
            strict: cfg.data.strict,
            skip_file_check: false,
        },
    )?;
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    let sampler = TripletSampler::new(&ds, Split::Train, cfg.train.seed)?;
    let mut val_queries = ds.queries(Split::Val);
    if cfg.train.val_queries > 0 && val_queries.len() > cfg.train.val_queries {
        // A deterministic, evenly spread subset keeps validation cheap on big sets.
        let stride = val_queries.len() as f64 / cfg.train.val_queries as f64;
        val_queries = (0..cfg.train.val_queries)
            .map(|i| val_queries[(i as f64 * stride) as usize])
            .collect();
    }
    let val_gallery = ds.unique_images(&[Split::Val], Source::Shop);
    let loader = LoaderConfig {
        size: cfg.model.image_size,
        crop: cfg.data.crop,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
    };
    Ok(Data {
        ds,
        sampler,
        val_queries,
        val_gallery,
        loader,
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
    // A request left from an earlier process must not pause or stop this one.
    let _ = std::fs::remove_file(run.control());
    let mut metrics = MetricsWriter::append(&run.metrics())?;
    let mut emit = |event: TrainEvent| -> Result<(), TrainError> {
        metrics.write(&event)?;
        on_event(&event);
        Ok(())
    };
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
    opt: AdamW,
    trainable: Vec<candle_core::Var>,
    loss: TripletLoss,
    step: usize,
    epoch: usize,
    epoch_position: usize,
    best_val_top20: Option<f64>,
    last_val: Option<Retrieval>,
    resumed: bool,
    /// Step of the newest `last` checkpoint (avoids writing the same one twice).
    saved_last: Option<usize>,
}

impl<'a> Session<'a> {
    fn start(job: &'a TrainJob, run: &'a RunDir) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let choice = parse_device(&cfg.train.device).map_err(TrainError::Setting)?;
        let device = device::select(choice)?;
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
        let named: Vec<(String, candle_core::Var, bool)> = sorted_vars(&varmap)
            .into_iter()
            .filter(|(name, _)| model.is_trainable(name))
            .map(|(name, var)| {
                let decay = var.rank() > 1;
                (name, var, decay)
            })
            .collect();
        let trainable = named.iter().map(|(_, v, _)| v.clone()).collect();
        let opt = AdamW::new(named, cfg.train.weight_decay)?;
        let mut session = Self {
            job,
            run,
            data,
            device,
            model,
            varmap,
            opt,
            trainable,
            loss: TripletLoss {
                margin: cfg.train.margin,
                mining: cfg.train.mining,
            },
            step: 0,
            epoch: 0,
            epoch_position: 0,
            best_val_top20: None,
            last_val: None,
            resumed: false,
            saved_last: None,
        };
        let last = run.checkpoint(CheckpointKind::Last);
        if job.resume {
            session.restore(&last)?;
        }
        write_bytes_atomic(
            &run.config(),
            toml::to_string(&cfg).unwrap_or_default().as_bytes(),
        )
        .map_err(|source| TrainError::Io {
            path: run.config(),
            source,
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
        let restored = match candle_core::safetensors::load(&optim_path, &self.device) {
            Ok(tensors) if tensors_step(&tensors) == Some(meta.step) => self
                .opt
                .load_state(meta.optimizer_t, |name| tensors.get(name).cloned())?,
            _ => 0,
        };
        if restored == 0 {
            tracing::warn!("no matching optimizer state; resuming with fresh Adam moments");
            self.opt.t = meta.optimizer_t;
        }
        self.step = meta.step;
        self.epoch = meta.epoch;
        self.epoch_position = meta.epoch_position;
        self.best_val_top20 = meta.best_val_top20;
        self.last_val = meta.val;
        self.resumed = true;
        Ok(())
    }

    fn steps_per_epoch(&self) -> usize {
        let n = self.data.sampler.len();
        let b = self.job.config.train.batch;
        (n / b).max(1)
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
        let cfg = &self.job.config;
        let params: usize = sorted_vars(&self.varmap)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        let trainable_params: usize = self.trainable.iter().map(|v| v.elem_count()).sum();
        emit(TrainEvent::Started {
            run: self.run.name(),
            device: device::describe(&self.device),
            backbone: cfg.model.backbone.to_string(),
            image_size: cfg.model.image_size,
            batch: cfg.train.batch,
            epochs: cfg.train.epochs,
            steps_per_epoch: self.steps_per_epoch(),
            total_steps: self.total_steps(),
            start_step: self.step,
            resumed: self.resumed,
            // The config spelling (`batch_hard`), not the Rust variant name.
            mining: serde_json::to_value(cfg.train.mining)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            params,
            trainable_params,
            train_triplets: self.data.sampler.len(),
            val_queries: self.data.val_queries.len(),
            val_gallery: self.data.val_gallery.len(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        })?;
        if !self.resumed
            && let Some((v, val_loss)) = self.validate()?
        {
            emit(TrainEvent::Baseline {
                val_loss,
                val_top1: v.at(1),
                val_top20: v.at(20),
                val_map_at_r: v.map_at_r,
            })?;
        }
        let started = Instant::now();
        let mut rate = RateMeter::default();
        let total_steps = self.total_steps();
        while self.epoch < cfg.train.epochs {
            let epoch_start = Instant::now();
            let triplets = self.data.sampler.epoch(self.epoch as u64).triplets;
            let b = cfg.train.batch;
            let usable = (triplets.len() / b).max(1) * b;
            let triplets = &triplets[..usable.min(triplets.len())];
            let first_batch = self.epoch_position / b;
            let batches: Vec<Vec<Vec<ImageSpec>>> = triplets
                .chunks(b)
                .skip(first_batch)
                .map(|chunk| {
                    chunk
                        .iter()
                        .map(|t| {
                            vec![
                                self.data.ds.spec(t.anchor),
                                self.data.ds.spec(t.positive),
                                self.data.ds.spec(t.negative),
                            ]
                        })
                        .collect()
                })
                .collect();
            let labels: Vec<Vec<u64>> = triplets
                .chunks(b)
                .skip(first_batch)
                .map(|chunk| {
                    let item = |img: usize| self.data.ds.images[img].item as u64;
                    let mut l: Vec<u64> = chunk.iter().map(|t| item(t.anchor)).collect();
                    l.extend(chunk.iter().map(|t| item(t.positive)));
                    l.extend(chunk.iter().map(|t| item(t.negative)));
                    l
                })
                .collect();
            let mut loss_sum = 0f64;
            let mut loss_n = 0usize;
            let loader = Prefetcher::spawn(batches, self.data.loader)?;
            for (batch, batch_labels) in loader.zip(labels) {
                while self.paused(control) && !self.stopping(control) {
                    std::thread::sleep(Duration::from_millis(50));
                    rate.pause();
                }
                if self.stopping(control) {
                    return self.finish(StopReason::Interrupted, started, emit);
                }
                if !batch.failed.is_empty() {
                    emit(TrainEvent::Notice {
                        step: self.step,
                        message: format!(
                            "skipped {} unreadable images (first: {})",
                            batch.failed.len(),
                            batch.failed[0]
                        ),
                    })?;
                }
                if batch.kept.len() < 2 {
                    self.epoch_position += b;
                    continue;
                }
                let keep_labels: Vec<u64> = (0..3)
                    .flat_map(|m| batch.kept.iter().map(move |&k| (m, k)))
                    .map(|(m, k)| batch_labels[m * b + k])
                    .collect();
                let x = Tensor::from_vec(
                    batch.data,
                    batch.n * 3 * (batch.size as usize).pow(2),
                    &self.device,
                )?
                .reshape((
                    batch.n,
                    3,
                    batch.size as usize,
                    batch.size as usize,
                ))?;
                let lr = learning_rate(
                    cfg.train.lr,
                    cfg.train.schedule,
                    cfg.train.warmup_steps,
                    self.step,
                    total_steps,
                );
                self.model
                    .set_dropout_stream(cfg.train.seed, self.step as u64);
                let emb = self.model.forward_t(&x, true)?;
                let stats = self.loss.compute(&emb, &keep_labels)?;
                let loss = stats.loss.to_scalar::<f32>()?;
                if !loss.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: self.step,
                        value: loss,
                    });
                }
                let mut grads = stats.loss.backward()?;
                let grad_norm = clip_grad_norm(&mut grads, &self.trainable, cfg.train.grad_clip)?;
                if !grad_norm.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: self.step,
                        value: grad_norm,
                    });
                }
                self.opt.step(&grads, lr)?;
                self.step += 1;
                self.epoch_position += b;
                loss_sum += f64::from(loss);
                loss_n += 1;
                rate.record(batch.kept.len());
                emit(TrainEvent::Step {
                    step: self.step,
                    epoch: self.epoch,
                    loss,
                    active: stats.active,
                    d_ap: stats.mean_ap,
                    d_an: stats.mean_an,
                    lr,
                    grad_norm,
                    triplets_per_s: rate.per_second(),
                    elapsed_s: started.elapsed().as_secs_f64(),
                })?;
                if cfg.train.max_steps > 0 && self.step >= cfg.train.max_steps {
                    return self.finish(StopReason::MaxSteps, started, emit);
                }
                if cfg.train.checkpoint_every > 0
                    && self.step.is_multiple_of(cfg.train.checkpoint_every)
                {
                    self.save(CheckpointKind::Last, emit)?;
                }
            }
            let val = self.validate()?;
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
            let improved = match (&val, self.best_val_top20) {
                (Some(v), Some(best)) => v.0.at(20) > best,
                (Some(_), None) => true,
                (None, _) => false,
            };
            self.last_val = val.map(|v| v.0);
            if improved {
                self.best_val_top20 = self.last_val.as_ref().map(|v| v.at(20));
                self.save(CheckpointKind::Best, emit)?;
            }
            self.save(CheckpointKind::Last, emit)?;
        }
        self.finish(StopReason::Finished, started, emit)
    }

    /// Paused from this process or through the run's control file.
    fn paused(&self, control: &Control) -> bool {
        control.is_paused() || self.run.read_control() == ControlRequest::Pause
    }

    fn stopping(&self, control: &Control) -> bool {
        control.stop_requested() || self.run.read_control() == ControlRequest::Stop
    }

    fn finish(
        &mut self,
        reason: StopReason,
        started: Instant,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<TrainOutcome, TrainError> {
        if self.saved_last != Some(self.step) {
            self.save(CheckpointKind::Last, emit)?;
        }
        emit(TrainEvent::Done {
            step: self.step,
            epoch: self.epoch,
            reason,
            best_val_top20: self.best_val_top20.unwrap_or(0.0),
            seconds: started.elapsed().as_secs_f64(),
        })?;
        Ok(TrainOutcome {
            reason,
            step: self.step,
            best_val_top20: self.best_val_top20,
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
            best_val_top20: self.best_val_top20,
            val: self.last_val.clone(),
            optimizer_t: self.opt.t,
            fingerprint: checkpoint::fingerprint(&self.varmap)?,
            config_hash: model_hash(cfg),
            backbone: cfg.model.backbone.to_string(),
            image_size: cfg.model.image_size,
            embedding_dim: cfg.model.embedding_dim,
        })
    }

    /// Weights, then (for `last`) optimizer moments, then the sidecar — each written
    /// to a temporary file and renamed, so a kill leaves the previous set usable.
    fn save(
        &mut self,
        kind: CheckpointKind,
        emit: &mut dyn FnMut(TrainEvent) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let path = self.run.checkpoint(kind);
        let meta = self.meta()?;
        checkpoint::save(&self.varmap, &path)?;
        if kind == CheckpointKind::Last {
            let mut tensors: HashMap<String, Tensor> = self
                .opt
                .state()
                .into_iter()
                .map(|(n, t)| t.to_device(&Device::Cpu).map(|t| (n, t)))
                .collect::<candle_core::Result<_>>()?;
            tensors.insert(
                "optim.step".into(),
                Tensor::new(&[self.step as u32], &Device::Cpu)?,
            );
            let optim = self.run.optimizer_state();
            let bytes = safetensors::tensor::serialize(tensors, None)
                .map_err(|e| TrainError::Model(e.into()))?;
            write_bytes_atomic(&optim, &bytes).map_err(|source| TrainError::Io {
                path: optim.clone(),
                source,
            })?;
        }
        let sidecar = sidecar_path(&path);
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write_bytes_atomic(&sidecar, &json).map_err(|source| TrainError::Io {
            path: sidecar.clone(),
            source,
        })?;
        if kind == CheckpointKind::Last {
            self.saved_last = Some(self.step);
        }
        emit(TrainEvent::Checkpoint {
            step: self.step,
            epoch: self.epoch,
            kind,
            path: path.display().to_string(),
        })
    }

    /// Val top-k and val loss (eval mode) on the val split; `None` without val pairs.
    fn validate(&self) -> Result<Option<(Retrieval, f32)>, TrainError> {
        validate(
            &self.model,
            &self.data.ds,
            &self.data.val_queries,
            &self.data.val_gallery,
            self.data.loader,
            &self.device,
            self.job.config.train.margin,
        )
    }
}

fn tensors_step(tensors: &HashMap<String, Tensor>) -> Option<usize> {
    let v = tensors.get("optim.step")?.to_vec1::<u32>().ok()?;
    v.first().map(|&s| s as usize)
}

/// Embeds val queries and gallery once; top-k from an exact ranking and a triplet
/// loss over the val pairs (the positive from the pair, the negative the hardest
/// gallery image of another item in the same small category).
pub fn validate(
    model: &Embedder,
    ds: &Dataset,
    queries: &[usize],
    gallery: &[usize],
    loader: LoaderConfig,
    device: &Device,
    margin: f32,
) -> Result<Option<(Retrieval, f32)>, TrainError> {
    if queries.is_empty() || gallery.is_empty() {
        return Ok(None);
    }
    let specs = |imgs: &[usize]| imgs.iter().map(|&i| ds.spec(i)).collect::<Vec<_>>();
    let q = embed_images(model, &specs(queries), loader, 64, device, &mut |_, _| {})?;
    let g = embed_images(model, &specs(gallery), loader, 64, device, &mut |_, _| {})?;
    let q_items: Vec<usize> = q.kept.iter().map(|&k| ds.images[queries[k]].item).collect();
    let g_items: Vec<usize> = g.kept.iter().map(|&k| ds.images[gallery[k]].item).collect();
    let retrieval = eval::evaluate(
        &q.vectors,
        &g.vectors,
        &q_items,
        &g_items,
        &eval::REPORTED_K,
    )?;
    let val_loss = val_triplet_loss(
        ds, &q.vectors, &g.vectors, &q_items, &g_items, &g.kept, gallery, margin,
    )?;
    Ok(Some((retrieval, val_loss)))
}

/// Mean triplet loss of each query with its item's nearest... shop image as positive
/// and the closest shop image of another item of the same small category as negative.
#[allow(clippy::too_many_arguments)]
fn val_triplet_loss(
    ds: &Dataset,
    q: &Tensor,
    g: &Tensor,
    q_items: &[usize],
    g_items: &[usize],
    g_kept: &[usize],
    gallery: &[usize],
    margin: f32,
) -> Result<f32, TrainError> {
    // Unit vectors: d² = 2 − 2·cos.
    let cos = q
        .matmul(&g.t()?)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let g_cat: Vec<usize> = g_kept
        .iter()
        .map(|&k| ds.items[ds.images[gallery[k]].item].category)
        .collect();
    let mut sum = 0f64;
    let mut n = 0usize;
    for (row, &item) in cos.iter().zip(q_items) {
        let cat = ds.items[item].category;
        let dist = |c: f32| (2.0 - 2.0 * c).max(0.0).sqrt();
        let pos = row
            .iter()
            .zip(g_items)
            .filter(|(_, gi)| **gi == item)
            .map(|(c, _)| dist(*c))
            .fold(f32::NAN, f32::max);
        let neg = row
            .iter()
            .zip(g_items.iter().zip(&g_cat))
            .filter(|(_, (gi, gc))| **gi != item && **gc == cat)
            .map(|(c, _)| dist(*c))
            .fold(f32::NAN, f32::min);
        if pos.is_finite() && neg.is_finite() {
            sum += f64::from((pos - neg + margin).max(0.0));
            n += 1;
        }
    }
    Ok(if n == 0 {
        f32::NAN
    } else {
        (sum / n as f64) as f32
    })
}

/// Triplets per second over the recent steps (the first step, a warm-up, excluded).
#[derive(Debug, Default)]
struct RateMeter {
    window: std::collections::VecDeque<(Instant, usize)>,
}

impl RateMeter {
    const WINDOW: usize = 20;

    fn record(&mut self, triplets: usize) {
        self.window.push_back((Instant::now(), triplets));
        if self.window.len() > Self::WINDOW {
            self.window.pop_front();
        }
    }

    /// A pause must not count as slow training.
    fn pause(&mut self) {
        self.window.clear();
    }

    fn per_second(&self) -> f32 {
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else {
            return 0.0;
        };
        let secs = last.0.duration_since(first.0).as_secs_f32();
        if secs <= 0.0 {
            return 0.0;
        }
        let n: usize = self.window.iter().skip(1).map(|(_, t)| t).sum();
        n as f32 / secs
    }
}
