//! Checkpoints and resuming: what a checkpoint keeps besides the weights and the
//! optimizer moments ([`Carried`]; a new piece of trainer state to carry over is one
//! more field there, captured in [`Session::carried`] and taken back in
//! [`Session::continue_from`]), where in its epoch a run picks up, and which setting
//! changes a checkpoint can honour; how a run begins ([`begin`]: a resume repairs and
//! loads its `last` checkpoint), and how a session saves one ([`Session::save`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Deserializer, Serialize};

use super::average::WeightAverage;
use super::budget::{Budget, BudgetState};
use super::checkpoint_policy::CheckpointPolicy;
use super::collapse::CollapseMonitor;
use super::error::TrainError;
use super::events::{SettingChange, TrainEvent};
use super::job::TrainJob;
use super::metrics_log::MetricsWriter;
use super::session::{Prepared, Session};
use crate::config::Config;
use crate::fsutil::{absolute, fnv1a64};
use crate::model::checkpoint;
use crate::model::loss::PROXIES_NAME;
use crate::run::checkpoints::{
    self as checkpoint_set, CHECKPOINT_FORMAT, CheckpointFiles, CheckpointMeta, NewCheckpoint,
    OPTIM_STEP, Recovery, sidecar_path,
};
use crate::run::folder::CheckpointKind;
use crate::run::folder::RunDir;
use crate::run::settings;

/// The trainer's state a checkpoint keeps for a resume (its sidecar's `trainer`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Carried {
    /// Seconds trained over every process, the end's reserve, the schedule position.
    #[serde(deserialize_with = "or_default")]
    pub budget: BudgetState,
    /// The collapse monitor's window and state.
    #[serde(deserialize_with = "or_default")]
    pub collapse: CollapseMonitor,
    /// Step of the newest validation (a stop validates unless it just did).
    #[serde(deserialize_with = "or_default")]
    pub validated_at: Option<usize>,
    /// Budget seconds when the newest epoch-end validation ended.
    #[serde(deserialize_with = "or_default")]
    pub validated_s: Option<f64>,
}

/// A piece that cannot be read (a damaged sidecar) starts afresh, as in a checkpoint
/// written before it was kept, without losing the others.
fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

impl Carried {
    pub fn of(meta: &CheckpointMeta) -> Self {
        serde_json::from_value(meta.trainer.clone()).unwrap_or_default()
    }
}

/// Where a resumed run picks up in its epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Epoch of the newest step (from 0) and the sampler's units of it trained.
    pub epoch: usize,
    pub units: usize,
    /// That epoch's end (validation) is done: the run goes on with the next one.
    pub epoch_done: bool,
}

impl Position {
    pub fn of(meta: &CheckpointMeta) -> Self {
        // Format 1 kept the epoch to resume in: the start of epoch e > 0 was the end
        // of epoch e − 1.
        if meta.format < 2 && meta.epoch > 0 && meta.epoch_position == 0 {
            return Self {
                epoch: meta.epoch - 1,
                units: 0,
                epoch_done: true,
            };
        }
        Self {
            epoch: meta.epoch,
            units: meta.epoch_position,
            epoch_done: meta.epoch_done,
        }
    }
}

/// Hash of the settings that shape the weights (a resumed run must match them).
pub fn model_hash(config: &Config) -> String {
    let text = toml::to_string(&config.model.embedder().weights_shape()).unwrap_or_default();
    format!("{:016x}", fnv1a64(text.as_bytes()))
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

/// The settings a run saves as its `config.toml`: the job's, naming this run and its
/// dataset by absolute paths, so that they hold from any folder.
pub fn run_settings(job: &TrainJob) -> Config {
    let mut c = job.config.clone();
    c.train.run = absolute(&job.run);
    c.data.root = absolute(&job.data);
    c.model.pretrained = absolute_weights(&c.model.pretrained);
    c
}

/// A pretrained weights file made absolute; empty and `hf:REPO` stay as they are.
fn absolute_weights(setting: &Path) -> std::path::PathBuf {
    match crate::weights::Pretrained::parse(setting) {
        Ok(Some(crate::weights::Pretrained::File(path))) => absolute(&path),
        _ => setting.to_path_buf(),
    }
}

/// The settings of `wanted` that differ from the run's `saved` ones. Paths compare
/// as absolute paths (older runs saved them as typed), and `train.run` names the run
/// being resumed wherever its folder was moved.
pub fn changes(saved: &Config, wanted: &Config) -> Vec<SettingChange> {
    let mut saved = saved.clone();
    saved.train.run.clone_from(&wanted.train.run);
    saved.data.root = absolute(&saved.data.root);
    saved.model.pretrained = absolute_weights(&saved.model.pretrained);
    settings::diff(&saved, wanted)
        .into_iter()
        .map(|d| SettingChange {
            key: d.key,
            from: d.a,
            to: d.b,
        })
        .collect()
}

/// Refuses what a checkpoint cannot continue: another model shape (its weights would
/// not fit) or a switch to or from a loss with class weights (it has none for that).
pub fn refuse_unhonourable(
    meta: &CheckpointMeta,
    saved: Option<&Config>,
    changes: &[SettingChange],
    wanted: &Config,
) -> Result<(), String> {
    if meta.config_hash != model_hash(wanted) {
        let model: Vec<String> = changes
            .iter()
            .filter(|c| c.key.starts_with("model."))
            .map(ToString::to_string)
            .collect();
        let what = if model.is_empty() {
            String::new()
        } else {
            format!(" ({})", model.join(", "))
        };
        return Err(format!(
            "its checkpoint is a {} with {}-d embeddings, which another model shape{what} cannot continue; \
             resume with the run's own settings (drop the flags that change the model), or train a new --run",
            meta.backbone, meta.embedding_dim
        ));
    }
    if let Some(saved) = saved {
        let (from, to) = (saved.loss.kind, wanted.loss.kind);
        if from != to && (from.has_proxies() || to.has_proxies()) {
            return Err(format!(
                "loss.kind {from} → {to}: the checkpoint's loss state (class weights) belongs to {from}; \
                 resume without --loss or --mining, or train a new --run"
            ));
        }
    }
    Ok(())
}

/// Where a run starts. A new one is refused over existing checkpoints; a resume
/// repairs checkpoint writes an earlier process left half done (the notices say
/// which) and loads `last` into `prepared` ([`restore`]). A refusal writes nothing;
/// a checkpoint that cannot be loaded is logged as the run's `failed` event.
pub(super) fn begin(
    job: &TrainJob,
    run: &RunDir,
    wanted: &Config,
    prepared: &mut Prepared,
) -> Result<(Vec<TrainEvent>, Option<Resumed>), TrainError> {
    // Refused before anything is written: the existing run's log stays as it was.
    if !job.resume && run.checkpoint(CheckpointKind::Last).exists() {
        return Err(TrainError::Resume {
            run: run.root.clone(),
            reason:
                "it already has checkpoints: pass --resume to continue it, or choose a new --run"
                    .into(),
        });
    }
    if !job.resume {
        return Ok((Vec::new(), None));
    }
    let notices = recover(run)?;
    match restore(run, wanted, prepared) {
        Ok(r) => Ok((notices, Some(r))),
        // A refusal leaves the run as it was: nothing it cannot honour is logged.
        Err(e @ TrainError::Resume { .. }) => Err(e),
        Err(e) => {
            MetricsWriter::append(&run.metrics())?.write(&TrainEvent::Failed {
                step: 0,
                epoch: 0,
                message: e.to_string(),
            })?;
            Err(e)
        }
    }
}

/// Repairs checkpoint writes an earlier process left half done; the notices say which.
fn recover(run: &RunDir) -> Result<Vec<TrainEvent>, TrainError> {
    let mut notices = Vec::new();
    for kind in [CheckpointKind::Last, CheckpointKind::Best] {
        let files = CheckpointFiles::of(run, kind);
        let recovery = checkpoint_set::recover(&files).map_err(|source| TrainError::Io {
            path: files.weights.clone(),
            source,
        })?;
        if let Recovery::RolledBack { step } = recovery {
            notices.push(TrainEvent::Notice {
                step,
                message: format!(
                    "the {} checkpoint's last write was interrupted; using the complete one of step {step}",
                    kind.name()
                ),
                kind: None,
            });
        }
    }
    Ok(notices)
}

/// A checkpoint's sidecar, weights and optimizer state, serialized.
type Serialized = (CheckpointMeta, Vec<u8>, Option<Vec<u8>>);

/// What a resumed session continues from.
pub(super) struct Resumed {
    pub(super) meta: CheckpointMeta,
    pub(super) position: Position,
    pub(super) carried: Carried,
    /// The settings this resume changes.
    pub(super) changes: Vec<SettingChange>,
}

/// Loads the run's `last` checkpoint into the prepared model, optimisers and class
/// weights, after refusing settings it cannot honour. Writes nothing.
fn restore(run: &RunDir, wanted: &Config, prepared: &mut Prepared) -> Result<Resumed, TrainError> {
    let refused = |reason: String| TrainError::Resume {
        run: run.root.clone(),
        reason,
    };
    let last = run.checkpoint(CheckpointKind::Last);
    if !last.exists() {
        return Err(refused(format!(
            "{} does not exist (train it without --resume)",
            last.display()
        )));
    }
    let meta = read_meta(&last)?;
    let saved = match settings::load(&run.root) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("{e}; the settings this resume changes cannot be listed");
            None
        }
    };
    let changes = saved
        .as_ref()
        .map(|s| changes(s, wanted))
        .unwrap_or_default();
    refuse_unhonourable(&meta, saved.as_ref(), &changes, wanted).map_err(refused)?;
    checkpoint::load_full(&prepared.varmap, &last)?;
    if checkpoint::fingerprint(&prepared.varmap)? != meta.fingerprint {
        return Err(refused(
            "the checkpoint and its .json sidecar disagree (interrupted write?); resume from best.safetensors by copying it over last".into(),
        ));
    }
    let tensors = match candle_core::safetensors::load(run.optimizer_state(), &prepared.device) {
        Ok(tensors) if tensors_step(&tensors) == Some(meta.step) => tensors,
        _ => HashMap::new(),
    };
    let restored = prepared
        .optimisers
        .model
        .load_state(meta.optimizer_t, |name| tensors.get(name).cloned())?;
    if restored == 0 {
        tracing::warn!("no matching optimizer state; resuming with fresh Adam moments");
    }
    if let (Some(p), Some(opt)) = (
        prepared.criterion.proxies(),
        &mut prepared.optimisers.proxies,
    ) {
        match tensors.get(PROXIES_NAME) {
            Some(saved) if saved.dims() == p.dims() => {
                p.set(saved)?;
                opt.load_state(meta.optimizer_t, |name| tensors.get(name).cloned())?;
            }
            Some(saved) => {
                return Err(refused(format!(
                    "the checkpoint's class weights are for {} training items and this data has {}; \
                     resume with the run's own dataset (drop --data), or train a new --run",
                    saved.dims().first().copied().unwrap_or(0),
                    p.dims().first().copied().unwrap_or(0)
                )));
            }
            None => tracing::warn!(
                "no saved class weights for the {} loss; resuming with fresh ones",
                prepared.criterion.config().kind
            ),
        }
    }
    // The weights file holds the average; the live weights resume training.
    if wanted.train.ema > 0.0 {
        let mut average = WeightAverage::new(&prepared.varmap, wanted.train.ema)?;
        if !average.restore_live(|name| tensors.get(name).cloned())? {
            tracing::warn!("no saved live weights; training resumes from the checkpoint's weights");
        }
        prepared.average = Some(average);
    }
    Ok(Resumed {
        position: Position::of(&meta),
        carried: Carried::of(&meta),
        meta,
        changes,
    })
}

fn tensors_step(tensors: &HashMap<String, Tensor>) -> Option<usize> {
    let v = tensors.get(OPTIM_STEP)?.to_vec1::<u32>().ok()?;
    v.first().map(|&s| s as usize)
}

impl Session<'_> {
    /// The state a checkpoint written now carries.
    fn carried(&self) -> Carried {
        Carried {
            budget: self.budget.state(),
            collapse: self.collapse.clone(),
            validated_at: self.validated_at,
            validated_s: self.validated_s,
        }
    }

    /// Takes over where the checkpoint stopped: position, best, newest validation,
    /// time budget and collapse monitor.
    pub(super) fn continue_from(&mut self, r: Resumed) {
        let cfg = &self.job.config;
        self.step = r.meta.step;
        self.epoch = r.position.epoch;
        self.epoch_position = r.position.units;
        self.epoch_done = r.position.epoch_done;
        self.checkpoints = CheckpointPolicy::new(cfg.train.checkpoint_every, r.meta.best_val_top20);
        self.checkpoints.last_written(r.meta.step);
        self.last_val = r.meta.val;
        self.validated_at = r.carried.validated_at;
        self.validated_s = r.carried.validated_s;
        self.budget = Budget::new(cfg.time_limit(), r.carried.budget);
        self.collapse = r.carried.collapse;
        self.changes = r.changes;
        self.resumed = true;
    }

    fn meta(&self) -> Result<CheckpointMeta, TrainError> {
        let cfg = &self.job.config;
        Ok(CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            epoch: self.epoch,
            epoch_position: self.epoch_position,
            epoch_done: self.epoch_done,
            step: self.step,
            best_val_top20: self.checkpoints.best_top20(),
            val: self.last_val.clone(),
            optimizer_t: self.optimisers.model.t,
            fingerprint: checkpoint::fingerprint(&self.varmap)?,
            config_hash: model_hash(cfg),
            backbone: cfg.model.backbone.to_string(),
            image_size: cfg.model.image_size,
            embedding_dim: cfg.model.embedding_dim,
            trainer: serde_json::to_value(self.carried()).unwrap_or_default(),
        })
    }

    /// Moments of both optimisers and the class weights, which live outside the
    /// model: resume needs them, search does not.
    fn optimizer_state(&self) -> Result<Vec<u8>, TrainError> {
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
        safetensors::tensor::serialize(tensors, None).map_err(|e| TrainError::Model(e.into()))
    }

    /// The sidecar, the weights and (for `last`) the optimizer state, as they are now.
    fn serialize(&self, kind: CheckpointKind) -> Result<Serialized, TrainError> {
        let meta = self.meta()?;
        let weights = checkpoint::serialize(&self.varmap)?;
        let optim = match kind {
            CheckpointKind::Last => Some(self.optimizer_state()?),
            CheckpointKind::Best => None,
        };
        Ok((meta, weights, optim))
    }

    /// One unit: weights, (for `last`) optimizer state, and the sidecar, put in place
    /// together by [`checkpoint_set::write`].
    pub(super) fn save(&mut self, kind: CheckpointKind) -> Result<(), TrainError> {
        let t = Instant::now();
        let files = CheckpointFiles::of(self.run, kind);
        let path = files.weights.clone();
        // The weights file holds the average (what validation measured); `last` keeps
        // the live weights beside the optimizer state.
        self.swap_average()?;
        let serialized = self.serialize(kind);
        self.swap_average()?;
        let (meta, weights, optim) = serialized?;
        let new = NewCheckpoint {
            weights: &weights,
            optim: optim.as_deref(),
            meta: &meta,
        };
        checkpoint_set::write(&files, &new)
            .map_err(|(path, source)| TrainError::Io { path, source })?;
        if kind == CheckpointKind::Last {
            self.checkpoints.last_written(self.step);
        }
        self.budget.record_checkpoint(t.elapsed().as_secs_f64());
        self.emit(TrainEvent::Checkpoint {
            step: self.step,
            epoch: self.epoch,
            kind,
            path: path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(format: u32, epoch: usize, position: usize) -> CheckpointMeta {
        CheckpointMeta {
            format,
            epoch,
            epoch_position: position,
            epoch_done: false,
            step: 7,
            best_val_top20: None,
            val: None,
            optimizer_t: 7,
            fingerprint: String::new(),
            config_hash: String::new(),
            backbone: "resnet18".into(),
            image_size: 32,
            embedding_dim: 8,
            trainer: serde_json::Value::Null,
        }
    }

    #[test]
    fn older_checkpoints_resume_at_the_same_place() {
        // Format 1 after epoch 0 ended: "epoch 1, nothing of it done".
        assert_eq!(
            Position::of(&meta(1, 1, 0)),
            Position {
                epoch: 0,
                units: 0,
                epoch_done: true
            }
        );
        // Mid-epoch positions mean the same in both formats.
        let mid = Position::of(&meta(1, 2, 48));
        assert_eq!((mid.epoch, mid.units, mid.epoch_done), (2, 48, false));
        assert_eq!(Position::of(&meta(2, 2, 48)), mid);
        let mut done = meta(2, 0, 64);
        done.epoch_done = true;
        assert!(Position::of(&done).epoch_done);
        // No carried state: everything starts afresh.
        assert_eq!(Carried::of(&meta(1, 0, 0)), Carried::default());
    }

    #[test]
    fn carried_state_round_trips_and_a_damaged_piece_loses_only_itself() {
        let mut monitor = CollapseMonitor::default();
        for _ in 0..super::super::collapse::WINDOW {
            monitor.observe(super::super::collapse::StepSignals {
                spread: 0.99,
                d_ap: 0.1,
                d_an: 0.1,
                loss: 0.5,
                margin: None,
            });
        }
        assert!(monitor.warning().is_some());
        let carried = Carried {
            budget: BudgetState {
                elapsed_s: 12.5,
                ..BudgetState::default()
            },
            collapse: monitor,
            validated_at: Some(40),
            validated_s: Some(9.5),
        };
        let mut m = meta(2, 0, 0);
        m.trainer = serde_json::to_value(&carried).expect("json");
        let back: CheckpointMeta =
            serde_json::from_str(&serde_json::to_string(&m).expect("ser")).expect("de");
        assert_eq!(Carried::of(&back), carried);
        m.trainer["collapse"] = serde_json::json!({"state": 17});
        let partly = Carried::of(&m);
        assert_eq!(partly.collapse, CollapseMonitor::default());
        assert_eq!(
            (partly.budget, partly.validated_at),
            (carried.budget, Some(40))
        );
    }

    #[test]
    fn a_model_change_or_a_class_weight_loss_switch_is_refused() {
        // An older run saved its dataset as typed; the same folder made absolute (as
        // the job's settings are) is no change.
        let saved = Config::default();
        let mut m = meta(2, 0, 0);
        m.config_hash = model_hash(&saved);
        let mut wanted = saved.clone();
        wanted.data.root = absolute(&saved.data.root);
        wanted.model.image_size = 48;
        wanted.train.lr = 0.5;
        let c = changes(&saved, &wanted);
        let keys: Vec<&str> = c.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["model.image_size", "train.lr"]);
        assert!(refuse_unhonourable(&m, Some(&saved), &c, &wanted).is_ok());
        let mut other = saved.clone();
        other.model.embedding_dim = 64;
        let c = changes(&saved, &other);
        let why = refuse_unhonourable(&m, Some(&saved), &c, &other).expect_err("shape");
        assert!(why.contains("model.embedding_dim 512 → 64"), "{why}");
        let mut triplet = saved.clone();
        triplet.loss.kind = crate::model::LossKind::Triplet;
        let why = refuse_unhonourable(&m, Some(&saved), &[], &triplet).expect_err("loss");
        assert!(why.contains("norm_softmax → triplet"), "{why}");
    }
}
