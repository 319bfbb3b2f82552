//! The Train tab's state. [`TrainState`] is folded from [`TrainEvent`]s: the loss
//! series in two buffers (Burn's design: a recent window and a decimated full
//! history), validation per epoch and the untrained baseline, the latest step's
//! figures, ETA, checkpoints and notices. Pure data: a recorded `metrics.jsonl`
//! replays into the same state. [`TrainerStatus`] is the process writing the run.

use std::collections::VecDeque;

use crate::data::deepfashion::SplitSummary;
use crate::run::device::gib;
use crate::run::folder::CheckpointKind;
use crate::run::folder::ControlRequest;
use crate::train::events::{NoticeKind, RunStarted, StopReason, TrainEvent, ValMetrics};

/// Points kept in the recent window.
pub const RECENT_POINTS: usize = 1000;
/// The full history is halved (every other point dropped) beyond this many points.
pub const HISTORY_POINTS: usize = 250;
/// Steps after a (re)start before an ETA is shown: the first steps include warm-up.
pub const ETA_WARMUP_STEPS: usize = 5;
/// Smoothing of the train loss (exponential moving average, bias-corrected).
pub const SMOOTHING: f64 = 0.9;
/// Checkpoint and notice lines kept.
const LOG_LINES: usize = 50;

/// The train loss smoothed as the Train and Runs tabs draw it: an exponential moving
/// average with weight [`SMOOTHING`], bias-corrected (Adam's correction) so its first
/// values are not pulled towards 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Smoother {
    ema: f64,
    n: i32,
}

impl Smoother {
    /// Folds in `y` and returns the smoothed value; a non-finite `y` is skipped
    /// (`None`).
    pub fn push(&mut self, y: f64) -> Option<f64> {
        if !y.is_finite() {
            return None;
        }
        self.ema = SMOOTHING * self.ema + (1.0 - SMOOTHING) * y;
        self.n = self.n.saturating_add(1);
        Some(self.ema / (1.0 - SMOOTHING.powi(self.n)))
    }
}

/// A series of `(step, value)` points in two buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSeries {
    recent: VecDeque<(f64, f64)>,
    history: Vec<(f64, f64)>,
    /// Every `stride`-th point enters the history.
    stride: usize,
    skipped: usize,
    recent_cap: usize,
    history_cap: usize,
    len: usize,
}

impl Default for LossSeries {
    fn default() -> Self {
        Self::new(RECENT_POINTS, HISTORY_POINTS)
    }
}

impl LossSeries {
    pub fn new(recent_cap: usize, history_cap: usize) -> Self {
        Self {
            recent: VecDeque::new(),
            history: Vec::new(),
            stride: 1,
            skipped: 0,
            recent_cap: recent_cap.max(1),
            history_cap: history_cap.max(2),
            len: 0,
        }
    }

    pub fn push(&mut self, x: f64, y: f64) {
        if !y.is_finite() {
            return;
        }
        self.len += 1;
        self.recent.push_back((x, y));
        while self.recent.len() > self.recent_cap {
            self.recent.pop_front();
        }
        self.skipped += 1;
        if self.skipped >= self.stride {
            self.skipped = 0;
            self.history.push((x, y));
            if self.history.len() > self.history_cap {
                // Keep every other point, then take every other new one.
                self.history = self.history.iter().copied().step_by(2).collect();
                self.stride *= 2;
            }
        }
    }

    /// Points ever pushed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last `recent_cap` points, oldest first.
    pub fn recent(&self) -> Vec<(f64, f64)> {
        self.recent.iter().copied().collect()
    }

    /// The whole run, decimated; the newest point is always included.
    pub fn history(&self) -> Vec<(f64, f64)> {
        let mut h = self.history.clone();
        if let Some(&last) = self.recent.back()
            && h.last() != Some(&last)
        {
            h.push(last);
        }
        h
    }

    pub fn history_stride(&self) -> usize {
        self.stride
    }

    pub fn last(&self) -> Option<(f64, f64)> {
        self.recent.back().copied()
    }
}

/// The device as the Progress panel shows it, longest first (the view takes the
/// first that fits): `cuda:0 · NVIDIA H200 · compute 9.0 · 139.8 GiB (139.2 free)`.
/// None for logs from before the device was recorded.
pub fn device_labels(info: &RunStarted) -> Vec<String> {
    let i = info.device_info();
    if i.name.is_empty() {
        return Vec::new();
    }
    let total = (i.memory_bytes > 0).then(|| gib(i.memory_bytes));
    let with_free = total.as_ref().map(|t| match i.memory_free_bytes {
        Some(free) => format!("{t} ({} free)", gib(free).trim_end_matches(" GiB")),
        None => t.clone(),
    });
    let join = |parts: &[Option<&str>]| {
        parts
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let detail = (!i.detail.is_empty()).then_some(i.detail.as_str());
    vec![
        join(&[
            Some(&info.device),
            Some(&i.name),
            detail,
            with_free.as_deref(),
        ]),
        join(&[Some(&info.device), Some(&i.name), total.as_deref()]),
        join(&[Some(&info.device), total.as_deref()]),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    pub step: usize,
    pub epoch: usize,
    pub loss: f32,
    pub active: f32,
    pub d_ap: f32,
    pub d_an: f32,
    pub lr: f64,
    pub grad_norm: f32,
    /// Mean cosine between the batch's embeddings (NaN in older logs).
    pub spread: f32,
    pub triplets_per_s: f32,
    /// NaN in logs written before it was recorded.
    pub images_per_s: f32,
    pub elapsed_s: f64,
}

impl StepInfo {
    /// The figures of a `step` event.
    fn of(event: &TrainEvent) -> Option<Self> {
        let TrainEvent::Step {
            step,
            epoch,
            loss,
            active,
            d_ap,
            d_an,
            lr,
            grad_norm,
            spread,
            triplets_per_s,
            images_per_s,
            elapsed_s,
        } = *event
        else {
            return None;
        };
        Some(Self {
            step,
            epoch,
            loss,
            active,
            d_ap,
            d_an,
            lr,
            grad_norm,
            spread: spread.unwrap_or(f32::NAN),
            triplets_per_s,
            images_per_s: images_per_s.unwrap_or(f32::NAN),
            elapsed_s,
        })
    }
}

/// Validation of one epoch (or of the untrained model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValRow {
    /// `None` for the baseline.
    pub epoch: Option<usize>,
    /// Made when the run stopped inside `epoch`, not at its end.
    pub partial: bool,
    pub step: usize,
    pub train_loss: Option<f32>,
    pub val: ValMetrics,
}

/// The gallery validation ranks against beside the one evaluation ranks against:
/// top-k on a smaller gallery reads higher, so val top-20 overstates test top-20.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GallerySizes {
    /// Shop images of the val split (from the run's `started` event).
    pub val: usize,
    /// The evaluation protocol (`test`, `val+test`) and its gallery's size, when the
    /// dataset the dashboard read is the run's (its val split has as many shop
    /// images).
    pub eval: Option<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        reason: StopReason,
        step: usize,
        best_val_top20: f64,
        seconds: f64,
    },
    Failed {
        step: usize,
        message: String,
    },
}

impl Outcome {
    /// How a `done` or `failed` event ended the run.
    fn of(event: &TrainEvent) -> Option<Self> {
        match event {
            TrainEvent::Done {
                step,
                reason,
                best_val_top20,
                seconds,
                ..
            } => Some(Self::Done {
                reason: *reason,
                step: *step,
                best_val_top20: *best_val_top20,
                seconds: *seconds,
            }),
            TrainEvent::Failed { step, message, .. } => Some(Self::Failed {
                step: *step,
                message: message.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No event yet.
    Idle,
    /// Started, no step yet (data loading, baseline validation).
    WarmingUp,
    Training,
    Finished,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainState {
    /// The latest `started` event: the run, its recipe, data and device.
    pub info: Option<RunStarted>,
    pub baseline: Option<ValRow>,
    pub epochs: Vec<ValRow>,
    pub last: Option<StepInfo>,
    /// First step seen since the latest `started` (for the ETA).
    pub session_first: Option<StepInfo>,
    pub loss: LossSeries,
    pub smooth: LossSeries,
    smoother: Smoother,
    /// `(step, val top-1)` of every validation that measured retrieval, oldest first.
    pub val_top1: Vec<(f64, f64)>,
    /// `(step, val top-20)`, likewise.
    pub val_top20: Vec<(f64, f64)>,
    /// `(step, epoch, kind, path)`, newest last.
    pub checkpoints: Vec<(usize, usize, CheckpointKind, String)>,
    /// `(step, message)`, newest last.
    pub notices: Vec<(usize, String)>,
    /// The standing collapse warning `(step, message)`, until the run recovers or
    /// starts over.
    pub collapse: Option<(usize, String)>,
    pub outcome: Option<Outcome>,
    pub events: usize,
    pub starts: usize,
}

impl TrainState {
    pub fn apply_all<'a>(&mut self, events: impl IntoIterator<Item = &'a TrainEvent>) {
        for e in events {
            self.apply(e);
        }
    }

    pub fn apply(&mut self, event: &TrainEvent) {
        self.events += 1;
        match event {
            TrainEvent::Started(started) => self.started(started),
            TrainEvent::SettingsChanged { step, changes } => {
                let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
                let message = format!("resumed with changed settings: {}", list.join(", "));
                self.notice(*step, message);
            }
            TrainEvent::Baseline(val) => {
                let step = self.info.as_ref().map_or(0, |i| i.start_step);
                self.baseline = Some(ValRow {
                    epoch: None,
                    partial: false,
                    step,
                    train_loss: None,
                    val: *val,
                });
            }
            TrainEvent::Step { .. } => {
                if let Some(info) = StepInfo::of(event) {
                    self.stepped(info);
                }
            }
            TrainEvent::Epoch {
                epoch,
                step,
                train_loss,
                val,
                ..
            } => {
                // A stop inside this epoch validated it partially; the full row replaces it.
                self.epochs.retain(|r| r.epoch != Some(*epoch));
                self.validated(ValRow {
                    epoch: Some(*epoch),
                    partial: false,
                    step: *step,
                    train_loss: Some(*train_loss),
                    val: *val,
                });
            }
            TrainEvent::Validated {
                step, epoch, val, ..
            } => {
                self.epochs
                    .retain(|r| !(r.partial && r.epoch == Some(*epoch)));
                self.validated(ValRow {
                    epoch: Some(*epoch),
                    partial: true,
                    step: *step,
                    train_loss: None,
                    val: *val,
                });
            }
            TrainEvent::Checkpoint {
                step,
                epoch,
                kind,
                path,
            } => {
                self.checkpoints.push((*step, *epoch, *kind, path.clone()));
                trim(&mut self.checkpoints);
            }
            TrainEvent::Notice {
                step,
                message,
                kind,
            } => {
                match kind {
                    Some(NoticeKind::Collapse) => self.collapse = Some((*step, message.clone())),
                    Some(NoticeKind::CollapseCleared) => self.collapse = None,
                    None => {}
                }
                self.notice(*step, message.clone());
            }
            TrainEvent::Done { .. } | TrainEvent::Failed { .. } => {
                self.outcome = Outcome::of(event);
            }
        }
    }

    fn started(&mut self, started: &RunStarted) {
        self.starts += 1;
        self.info = Some(started.clone());
        self.session_first = None;
        self.outcome = None;
        // The new process says again whether the run is collapsing (its monitor is
        // carried over): a warning of an earlier process is not kept.
        self.collapse = None;
        if !started.resumed {
            // A fresh run in the same file starts the curves over.
            self.loss = LossSeries::default();
            self.smooth = LossSeries::default();
            self.smoother = Smoother::default();
            self.val_top1.clear();
            self.val_top20.clear();
            self.epochs.clear();
            self.baseline = None;
        }
    }

    fn stepped(&mut self, info: StepInfo) {
        if self.session_first.is_none() {
            self.session_first = Some(info);
        }
        self.last = Some(info);
        let x = info.step as f64;
        let y = f64::from(info.loss);
        self.loss.push(x, y);
        if let Some(smoothed) = self.smoother.push(y) {
            self.smooth.push(x, smoothed);
        }
    }

    fn validated(&mut self, row: ValRow) {
        // An epoch not due a validation (`train.validations`) has no point.
        if row.val.measured() {
            let x = row.step as f64;
            self.val_top1.push((x, row.val.val_top1));
            self.val_top20.push((x, row.val.val_top20));
        }
        self.epochs.push(row);
    }

    fn notice(&mut self, step: usize, message: String) {
        self.notices.push((step, message));
        trim(&mut self.notices);
    }

    pub fn phase(&self) -> Phase {
        match (&self.outcome, &self.info) {
            (Some(Outcome::Failed { .. }), _) => Phase::Failed,
            (Some(Outcome::Done { .. }), _) => Phase::Finished,
            (None, None) => Phase::Idle,
            (None, Some(_)) if self.session_first.is_none() => Phase::WarmingUp,
            (None, Some(_)) => Phase::Training,
        }
    }

    /// Steps done and the run's total.
    pub fn progress(&self) -> (usize, usize) {
        let total = self.info.as_ref().map_or(0, |i| i.total_steps);
        let done = self.last.map_or_else(
            || self.info.as_ref().map_or(0, |i| i.start_step),
            |s| s.step,
        );
        (done.min(total.max(done)), total)
    }

    /// 1-based epoch in progress and the number of epochs.
    pub fn epoch(&self) -> (usize, usize) {
        let epochs = self.info.as_ref().map_or(0, |i| i.epochs);
        let current = self.last.map_or(0, |s| s.epoch) + 1;
        (current.min(epochs.max(1)), epochs)
    }

    /// Seconds left, once [`ETA_WARMUP_STEPS`] steps ran since the latest start.
    pub fn eta_seconds(&self) -> Option<f64> {
        if self.phase() != Phase::Training {
            return None;
        }
        let (first, last) = (self.session_first?, self.last?);
        let steps = last.step.checked_sub(first.step)?;
        if steps < ETA_WARMUP_STEPS {
            return None;
        }
        let per_step = (last.elapsed_s - first.elapsed_s) / steps as f64;
        let (done, total) = self.progress();
        Some(per_step.max(0.0) * total.saturating_sub(done) as f64)
    }

    /// Best validation top-20 so far and its epoch (0-based).
    pub fn best(&self) -> Option<(usize, f64)> {
        self.epochs
            .iter()
            .filter_map(|r| r.epoch.map(|e| (e, r.val.val_top20)))
            // NaN (no val split) is no result, though `total_cmp` ranks it highest.
            .filter(|(_, top20)| top20.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The run's val gallery against `dataset`'s evaluation gallery; `None` for a
    /// run without validation.
    pub fn gallery_sizes(&self, dataset: Option<&SplitSummary>) -> Option<GallerySizes> {
        let info = self.info.as_ref().filter(|i| i.val_queries > 0)?;
        let eval = dataset
            .filter(|d| d.shop.val == info.val_gallery)
            .map(|d| (d.protocol.clone(), d.gallery));
        Some(GallerySizes {
            val: info.val_gallery,
            eval,
        })
    }

    /// Step of the newest checkpoint written.
    pub fn latest_checkpoint(&self) -> Option<usize> {
        self.checkpoints.last().map(|c| c.0)
    }
}

/// The trainer process writing the run, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainerStatus {
    pub pid: Option<u32>,
    /// Started by this dashboard.
    pub ours: bool,
    pub control: ControlRequest,
    /// A start was asked and no process is seen yet.
    pub starting: bool,
    /// A training started here is running: its end may build the index.
    started_here: bool,
}

impl Default for TrainerStatus {
    fn default() -> Self {
        Self {
            pid: None,
            ours: false,
            control: ControlRequest::Run,
            starting: false,
            started_here: false,
        }
    }
}

impl TrainerStatus {
    pub fn running(&self) -> bool {
        self.pid.is_some()
    }

    /// A start was asked of the runtime: no process yet, and it is ours.
    pub fn start_here(&mut self) {
        self.starting = true;
        self.ours = true;
        self.control = ControlRequest::Run;
        self.started_here = true;
    }

    /// The run's lock holder and pending control request, as the follower saw them.
    pub fn seen(&mut self, pid: Option<u32>, control: ControlRequest) {
        if pid.is_some() {
            self.starting = false;
        } else if self.pid.is_some() {
            self.ours = false;
        }
        self.pid = pid;
        self.control = if pid.is_some() {
            control
        } else {
            ControlRequest::Run
        };
    }

    /// The process this dashboard started.
    pub fn spawned(&mut self, pid: u32) {
        self.pid = Some(pid);
        self.starting = false;
    }

    /// The process this dashboard tried to start could not be.
    pub fn spawn_failed(&mut self) {
        self.starting = false;
        self.ours = false;
        self.started_here = false;
    }

    /// Whether `event` ends a training started here, other than by an interruption
    /// (when `demo` builds the index).
    pub fn ended_here(&mut self, event: &TrainEvent) -> bool {
        match event {
            TrainEvent::Done { reason, .. } if self.started_here => {
                self.started_here = false;
                *reason != StopReason::Interrupted
            }
            TrainEvent::Failed { .. } => {
                self.started_here = false;
                false
            }
            _ => false,
        }
    }
}

fn trim<T>(v: &mut Vec<T>) {
    if v.len() > LOG_LINES {
        v.drain(..v.len() - LOG_LINES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_decimated_by_two_and_recent_is_a_window() {
        let mut s = LossSeries::new(100, 10);
        for i in 0..1000 {
            s.push(f64::from(i), 1.0);
        }
        assert_eq!(s.recent().len(), 100);
        assert_eq!(s.recent()[0].0, 900.0);
        let h = s.history();
        assert!(h.len() <= 12, "{}", h.len());
        assert_eq!(h[0].0, 0.0);
        assert_eq!(h.last().map(|p| p.0), Some(999.0));
        assert!(s.history_stride() >= 64);
        assert_eq!(s.len(), 1000);
    }

    fn started(resumed: bool) -> TrainEvent {
        serde_json::from_value(serde_json::json!({
            "event": "started", "run": "r", "device": "cpu", "backbone": "resnet18",
            "image_size": 64, "batch": 16, "epochs": 5, "steps_per_epoch": 10,
            "total_steps": 50, "start_step": if resumed { 20 } else { 0 }, "resumed": resumed,
            "mining": "batch_hard", "params": 1, "trainable_params": 1,
            "train_triplets": 1, "val_queries": 1, "val_gallery": 1, "time": 0.0,
        }))
        .expect("a started event")
    }

    #[test]
    fn a_resumed_process_says_again_whether_the_run_is_collapsing() {
        let collapse = |step| TrainEvent::Notice {
            step,
            message: "the embeddings are collapsing".into(),
            kind: Some(NoticeKind::Collapse),
        };
        let mut t = TrainState::default();
        t.apply_all(&[started(false), collapse(12)]);
        assert!(t.collapse.is_some());
        // The next process's monitor found the run healthy: no stale warning.
        t.apply(&started(true));
        assert!(t.collapse.is_none());
        // It re-states a collapse still in progress.
        t.apply(&collapse(20));
        assert_eq!(t.collapse.as_ref().map(|c| c.0), Some(20));
    }

    #[test]
    fn the_smoother_is_a_debiased_ema_that_skips_non_finite_values() {
        let mut s = Smoother::default();
        assert_eq!(s.push(2.0), Some(2.0));
        assert_eq!(s.push(f64::NAN), None);
        let second = s.push(0.0).expect("finite");
        // (0.9·0.2 + 0.1·0) / (1 − 0.81)
        assert!((second - 0.18 / 0.19).abs() < 1e-12, "{second}");
    }

    fn epoch(epoch: usize, top20: f64) -> TrainEvent {
        serde_json::from_value(serde_json::json!({
            "event": "epoch", "epoch": epoch, "step": (epoch + 1) * 10, "train_loss": 1.0,
            "val_loss": if top20.is_finite() { Some(0.5) } else { None },
            "val_top1": if top20.is_finite() { Some(top20 / 2.0) } else { None },
            "val_top20": if top20.is_finite() { Some(top20) } else { None },
            "val_map_at_r": null, "seconds": 1.0,
        }))
        .expect("an epoch event")
    }

    #[test]
    fn the_val_curves_have_a_point_per_validation_and_none_for_epochs_without() {
        let mut t = TrainState::default();
        t.apply_all(&[
            started(false),
            epoch(0, 0.4),
            epoch(1, f64::NAN),
            epoch(2, 0.6),
        ]);
        assert_eq!(t.val_top20, [(10.0, 0.4), (30.0, 0.6)]);
        assert_eq!(t.val_top1, [(10.0, 0.2), (30.0, 0.3)]);
        assert_eq!(t.epochs.len(), 3, "every epoch has its row");
        // A resumed process keeps them; a fresh run starts over.
        t.apply(&started(true));
        assert_eq!(t.val_top20.len(), 2);
        t.apply(&started(false));
        assert!(t.val_top20.is_empty() && t.val_top1.is_empty());
    }

    #[test]
    fn the_eval_gallery_is_named_only_for_the_runs_own_dataset() {
        use crate::data::deepfashion::SplitCounts;
        let mut t = TrainState::default();
        assert_eq!(t.gallery_sizes(None), None);
        t.apply(&started(false));
        let summary = |val_shop| SplitSummary {
            protocol: "test".into(),
            pairs: SplitCounts::default(),
            items: SplitCounts::default(),
            consumer: SplitCounts::default(),
            shop: SplitCounts {
                train: 0,
                val: val_shop,
                test: 561,
            },
            query: 0,
            gallery: 561,
            images: 0,
            missing: 0,
            dropped_pairs: 0,
            categories: Vec::new(),
        };
        // The fixture's run has 1 val gallery image.
        let same = t.gallery_sizes(Some(&summary(1))).expect("validates");
        assert_eq!(same.val, 1);
        assert_eq!(same.eval, Some(("test".to_string(), 561)));
        let other = t.gallery_sizes(Some(&summary(198))).expect("validates");
        assert_eq!(other.eval, None);
    }
}
