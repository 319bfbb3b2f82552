//! The Runs tab's state: the runs of a folder (one [`RunSummary`] each, from
//! [`crate::train::runs`]), their curves, the selected row, the runs marked for the
//! overlaid charts (space), and the config diff of two runs (`d`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::moved;
use super::train::Smoother;
use crate::run::settings::SettingDiff;
use crate::train::events::TrainEvent;
use crate::train::runs::RunSummary;

/// Points per curve sent to the view (longer curves are decimated).
pub const MAX_POINTS: usize = 400;

/// A run's curves: the smoothed train loss by step and val top-20 by epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCurves {
    /// `(step, smoothed loss)`.
    pub loss: Vec<(f64, f64)>,
    /// `(epoch, val top-20)`.
    pub val_top20: Vec<(f64, f64)>,
}

/// Folds a run's events into its curves, incrementally (the loss smoothed by the
/// Train tab's [`Smoother`]). Each event costs O(log n) at most, so a log
/// of n events builds in O(n log n) however its events are ordered, and the loss
/// curve keeps a bounded number of points however long the run.
#[derive(Debug, Clone, Default)]
pub struct CurveBuilder {
    smoother: Smoother,
    /// From the run's `started` event: places a validation made mid-epoch.
    steps_per_epoch: usize,
    loss: Decimated,
    /// Val top-20 by x (epochs): a later validation at the same x replaces the
    /// earlier one.
    val_top20: BTreeMap<OrderedX, f64>,
}

impl CurveBuilder {
    pub fn apply(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::Started(s) => {
                if !s.resumed {
                    *self = Self::default();
                }
                self.steps_per_epoch = s.steps_per_epoch;
            }
            TrainEvent::Step { step, loss, .. } => {
                if let Some(smoothed) = self.smoother.push(f64::from(*loss)) {
                    self.loss.push((*step as f64, smoothed));
                }
            }
            // x counts epochs done: the untrained model at 0, the end of epoch e
            // (from 0, as events count) at e + 1, and the validation a run makes when
            // it stops mid-epoch at its fraction of an epoch: a run cut short by a step
            // or time limit still has a curve, as its row has a best value.
            TrainEvent::Baseline(val) => self.val_point(0.0, val.val_top20),
            TrainEvent::Epoch { epoch, val, .. } => {
                self.val_point((*epoch + 1) as f64, val.val_top20);
            }
            TrainEvent::Validated {
                step, epoch, val, ..
            } => {
                let x = match self.steps_per_epoch {
                    0 => *epoch as f64,
                    n => *step as f64 / n as f64,
                };
                self.val_point(x, val.val_top20);
            }
            _ => {}
        }
    }

    fn val_point(&mut self, x: f64, y: f64) {
        if y.is_finite() {
            self.val_top20.insert(OrderedX(x), y);
        }
    }

    /// The curves, each decimated to at most [`MAX_POINTS`] (the last point kept).
    pub fn curves(&self) -> RunCurves {
        let val: Vec<(f64, f64)> = self.val_top20.iter().map(|(x, y)| (x.0, *y)).collect();
        RunCurves {
            loss: decimate(&self.loss.points(), MAX_POINTS),
            val_top20: decimate(&val, MAX_POINTS),
        }
    }
}

/// An x coordinate ordered by `total_cmp` (a map key; x is never NaN here).
#[derive(Debug, Clone, Copy)]
struct OrderedX(f64);

impl PartialEq for OrderedX {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for OrderedX {}

impl PartialOrd for OrderedX {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedX {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A growing series kept to at most `2 · MAX_POINTS` points: when full, every other
/// point goes and the stride doubles (Burn's full-history buffer); the newest point
/// is always kept.
#[derive(Debug, Clone)]
struct Decimated {
    points: Vec<(f64, f64)>,
    stride: usize,
    seen: usize,
    last: Option<(f64, f64)>,
}

impl Default for Decimated {
    fn default() -> Self {
        Self {
            points: Vec::new(),
            stride: 1,
            seen: 0,
            last: None,
        }
    }
}

impl Decimated {
    fn push(&mut self, p: (f64, f64)) {
        if self.seen.is_multiple_of(self.stride) {
            self.points.push(p);
            if self.points.len() >= 2 * MAX_POINTS {
                let mut i = 0;
                self.points.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride *= 2;
            }
        }
        self.seen += 1;
        self.last = Some(p);
    }

    fn points(&self) -> Vec<(f64, f64)> {
        let mut out = self.points.clone();
        if let Some(last) = self.last
            && out.last() != Some(&last)
        {
            out.push(last);
        }
        out
    }
}

/// The curves of a whole event list.
pub fn curves_of(events: &[TrainEvent]) -> RunCurves {
    let mut b = CurveBuilder::default();
    for e in events {
        b.apply(e);
    }
    b.curves()
}

fn decimate(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(max - 1);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(stride).copied().collect();
    if let Some(last) = points.last()
        && out.last() != Some(last)
    {
        out.push(*last);
    }
    out
}

/// Whether two paths name the same run folder as the dashboard spells them (`run`
/// and `./run` do; no file system access).
pub fn same_run(a: &Path, b: &Path) -> bool {
    let parts = |p| Path::components(p).filter(|c| *c != std::path::Component::CurDir);
    parts(a).eq(parts(b))
}

/// One row of the table with its curves.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEntry {
    pub summary: RunSummary,
    pub curves: RunCurves,
}

/// What the runs worker reports: every run of the folder, when it was listed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunsListing {
    pub runs: Vec<RunEntry>,
    /// Seconds since the Unix epoch (the "updated … ago" column counts from it).
    pub listed_at: f64,
}

/// The config diff overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffView {
    /// The runs' names.
    pub a: String,
    pub b: String,
    /// Their folders (an answer for another pair is ignored).
    pub paths: (PathBuf, PathBuf),
    /// `None` while the worker reads the configs.
    pub rows: Option<Result<Vec<SettingDiff>, String>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunsState {
    /// The runs folder (the dashboard run's parent).
    pub dir: PathBuf,
    pub runs: Vec<RunEntry>,
    pub listed_at: f64,
    /// Whether a listing arrived.
    pub loaded: bool,
    pub error: Option<String>,
    pub selected: usize,
    /// Marked runs' paths, in the order they were marked (their colour).
    pub marked: Vec<PathBuf>,
    pub diff: Option<DiffView>,
    /// The worker was asked for the listing (the tab was opened once).
    pub watching: bool,
}

impl RunsState {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            ..Self::default()
        }
    }

    /// The runs folder of a dashboard on `run`: its parent (`.` for a bare name).
    pub fn dir_of(run: &Path) -> PathBuf {
        match run.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn listed(&mut self, listing: Result<RunsListing, String>) {
        match listing {
            Ok(l) => {
                let keep = self.selected_run().map(|r| r.summary.path.clone());
                self.runs = l.runs;
                self.listed_at = l.listed_at;
                self.loaded = true;
                self.error = None;
                if let Some(p) = keep
                    && let Some(i) = self.runs.iter().position(|r| r.summary.path == p)
                {
                    self.selected = i;
                }
                self.selected = moved(self.selected, 0, self.runs.len());
            }
            Err(e) => {
                self.loaded = true;
                self.error = Some(e);
            }
        }
    }

    pub fn selected_run(&self) -> Option<&RunEntry> {
        self.runs.get(self.selected)
    }

    pub fn step(&mut self, by: isize) {
        self.selected = moved(self.selected, by, self.runs.len());
    }

    /// Marks or unmarks the selected run.
    pub fn toggle_mark(&mut self) {
        let Some(path) = self.selected_run().map(|r| r.summary.path.clone()) else {
            return;
        };
        if let Some(i) = self.marked.iter().position(|p| *p == path) {
            self.marked.remove(i);
        } else {
            self.marked.push(path);
        }
    }

    /// Where `path` is among the marked runs (its colour), if marked.
    pub fn mark_of(&self, path: &Path) -> Option<usize> {
        self.marked.iter().position(|p| p == path)
    }

    /// The runs the charts show: the marked ones that exist, in marking order, with
    /// their mark index; the selected run when none is marked.
    pub fn charted(&self) -> Vec<(usize, &RunEntry)> {
        let marked: Vec<(usize, &RunEntry)> = self
            .marked
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                self.runs
                    .iter()
                    .find(|r| &r.summary.path == p)
                    .map(|r| (i, r))
            })
            .collect();
        if marked.is_empty() {
            self.selected_run()
                .map(|r| vec![(0, r)])
                .unwrap_or_default()
        } else {
            marked
        }
    }

    /// The two runs `d` compares: the two marked runs, or the first marked one and
    /// the selected one; `Err` says what to do instead.
    pub fn diff_pair(&self) -> Result<(PathBuf, PathBuf), &'static str> {
        let exists = |p: &PathBuf| self.runs.iter().any(|r| &r.summary.path == p);
        let marked: Vec<&PathBuf> = self.marked.iter().filter(|p| exists(p)).collect();
        let selected = self.selected_run().map(|r| &r.summary.path);
        if self.runs.len() < 2 {
            return Err("the config diff needs two runs in the folder");
        }
        match (marked.as_slice(), selected) {
            ([a, b], _) => Ok(((*a).clone(), (*b).clone())),
            ([a, ..], Some(s)) if *a != s => Ok(((*a).clone(), s.clone())),
            ([a, b, ..], _) => Ok(((*a).clone(), (*b).clone())),
            _ => Err("mark a run with space, select another, then d compares their configs"),
        }
    }

    /// Opens the diff overlay for `a` and `b` (waiting for the worker).
    pub fn open_diff(&mut self, a: &Path, b: &Path) {
        let name = |p: &Path| {
            self.runs
                .iter()
                .find(|r| r.summary.path == p)
                .map_or_else(|| p.display().to_string(), |r| r.summary.name.clone())
        };
        self.diff = Some(DiffView {
            a: name(a),
            b: name(b),
            paths: (a.to_path_buf(), b.to_path_buf()),
            rows: None,
        });
    }

    pub fn diff_arrived(&mut self, a: &Path, b: &Path, rows: Result<Vec<SettingDiff>, String>) {
        if let Some(d) = &mut self.diff
            && d.paths.0 == a
            && d.paths.1 == b
        {
            d.rows = Some(rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::events::ValMetrics;

    fn step(step: usize, loss: f32) -> TrainEvent {
        TrainEvent::Step {
            step,
            epoch: 0,
            loss,
            active: 0.5,
            d_ap: 0.5,
            d_an: 0.7,
            lr: 1e-3,
            grad_norm: 1.0,
            spread: None,
            triplets_per_s: 10.0,
            images_per_s: None,
            elapsed_s: step as f64,
        }
    }

    #[test]
    fn curves_are_the_debiased_ema_and_decimated() {
        let events: Vec<TrainEvent> = (0..1000).map(|i| step(i, 1.0)).collect();
        let c = curves_of(&events);
        assert!(c.loss.len() <= MAX_POINTS + 1);
        assert_eq!(c.loss.last().map(|p| p.0), Some(999.0));
        assert!(c.loss.iter().all(|p| (p.1 - 1.0).abs() < 1e-9));
        let c = curves_of(&[step(1, 2.0), step(2, 0.0)]);
        assert!((c.loss[0].1 - 2.0).abs() < 1e-9);
        assert!(c.loss[1].1 < 2.0 && c.loss[1].1 > 0.0);
    }

    fn started(steps_per_epoch: usize, resumed: bool) -> TrainEvent {
        serde_json::from_value(serde_json::json!({
            "event": "started", "run": "r", "device": "cpu", "backbone": "resnet18",
            "image_size": 64, "batch": 16, "epochs": 5, "steps_per_epoch": steps_per_epoch,
            "total_steps": 5 * steps_per_epoch, "start_step": 0, "resumed": resumed,
            "mining": "batchhard", "params": 1, "trainable_params": 1,
            "train_triplets": 1, "val_queries": 1, "val_gallery": 1, "time": 0.0,
        }))
        .expect("a started event")
    }

    fn validation(step: Option<usize>, epoch: usize, top20: f64) -> TrainEvent {
        let mut v = serde_json::json!({
            "event": "epoch", "step": step.unwrap_or((epoch + 1) * 100), "epoch": epoch,
            "train_loss": 1.0, "val_loss": 0.5, "val_top1": top20 / 2.0, "val_top20": top20,
            "val_map_at_r": 0.1, "seconds": 1.0,
        });
        if step.is_some() {
            v["event"] = "validated".into();
        }
        serde_json::from_value(v).expect("a validation event")
    }

    #[test]
    fn val_curve_has_the_baseline_and_validations_made_mid_epoch_in_order() {
        let baseline = TrainEvent::Baseline(ValMetrics {
            val_loss: 0.6,
            val_top1: 0.01,
            val_top20: 0.05,
            val_map_at_r: 0.01,
        });
        // A run stopped at step 60 of 100 per epoch, then resumed to the end of its
        // second epoch (epochs count from 0 in events); the end of the first arrives
        // after the stop's validation.
        let events = [
            started(100, false),
            baseline,
            validation(Some(60), 0, 0.2),
            started(100, true),
            validation(None, 1, 0.4),
            validation(None, 0, 0.3),
        ];
        let c = curves_of(&events);
        assert_eq!(
            c.val_top20,
            vec![(0.0, 0.05), (0.6, 0.2), (1.0, 0.3), (2.0, 0.4)]
        );
        // A fresh start forgets the earlier run's points.
        let mut more = events.to_vec();
        more.push(started(100, false));
        assert!(curves_of(&more).val_top20.is_empty());
    }

    #[test]
    fn curves_of_a_long_crafted_log_build_in_near_linear_time() {
        // Validations arriving in falling order were an insertion at the front each
        // (O(n²): minutes for this many); a long run keeps a bounded loss curve.
        let n = 200_000;
        let started = std::time::Instant::now();
        let mut b = CurveBuilder::default();
        for i in (0..n).rev() {
            b.apply(&validation(None, i, 0.5));
        }
        for i in 0..n {
            b.apply(&step(i, 1.0));
        }
        let c = b.curves();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(c.val_top20.len() <= MAX_POINTS + 1 && c.loss.len() <= MAX_POINTS + 1);
        // Epoch e (from 0) ends at x = e + 1.
        assert_eq!(c.val_top20.first().map(|p| p.0), Some(1.0));
        assert_eq!(c.val_top20.last().map(|p| p.0), Some(n as f64));
        assert!(
            b.loss.points.len() <= 2 * MAX_POINTS,
            "{}",
            b.loss.points.len()
        );
    }

    #[test]
    fn same_run_ignores_dot_components() {
        assert!(same_run(Path::new("./run"), Path::new("run")));
        assert!(same_run(Path::new("runs/./a"), Path::new("runs/a")));
        assert!(!same_run(Path::new("runs/a"), Path::new("runs/b")));
        assert!(!same_run(Path::new("a"), Path::new("runs/a")));
    }

    #[test]
    fn runs_folder_is_the_parent() {
        assert_eq!(
            RunsState::dir_of(Path::new("runs/demo")),
            PathBuf::from("runs")
        );
        assert_eq!(RunsState::dir_of(Path::new("demo")), PathBuf::from("."));
    }
}
