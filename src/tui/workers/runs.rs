//! The Runs tab's worker, started when the tab is first opened: every
//! [`EVERY`] (or at once on request) it lists the runs folder and each run's curves,
//! reading a run's `metrics.jsonl` only when its size or modification time changed,
//! and then only its new lines (summary and curves are folded incrementally; a
//! replaced file starts them over); it also answers config diffs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Outbox, spawn};
use crate::run::folder::{ControlRequest, RunDir};
use crate::run::settings::{self, SettingDiff};
use crate::train::metrics_log::{MetricsError, MetricsFollower};
use crate::train::runs::{self, EventSummary, RunSummary};
use crate::tui::app::WorkerEvent;
use crate::tui::tabs::runs::{CurveBuilder, RunEntry, RunsListing};

/// How often the folder is listed again.
pub const EVERY: Duration = Duration::from_secs(2);

enum Request {
    Refresh,
    Diff(PathBuf, PathBuf),
}

/// The handle the runtime keeps; dropping it ends the worker.
pub struct RunsWorker {
    tx: Sender<Request>,
}

impl RunsWorker {
    pub fn spawn(dir: PathBuf, out: Outbox) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let failed = |m| WorkerEvent::Runs(Err(m));
        spawn("runs", &out.clone(), failed, move || watch(&dir, &rx, &out));
        Self { tx }
    }

    pub fn refresh(&self) {
        let _ = self.tx.send(Request::Refresh);
    }

    pub fn diff(&self, a: PathBuf, b: PathBuf) {
        let _ = self.tx.send(Request::Diff(a, b));
    }
}

/// What a run's cached state was read from.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    len: Option<u64>,
    modified: Option<SystemTime>,
    pid: Option<u32>,
    control: ControlRequest,
}

fn key_of(dir: &Path) -> Key {
    let run = RunDir::new(dir);
    let meta = std::fs::metadata(run.metrics()).ok();
    Key {
        len: meta.as_ref().map(std::fs::Metadata::len),
        modified: meta.and_then(|m| m.modified().ok()),
        pid: run.locked_by(),
        control: run.read_control(),
    }
}

/// A run's events folded so far, following its `metrics.jsonl` by offset: a change
/// reads only the new lines, and a replaced file starts the fold over.
struct Cached {
    /// `None` until first read.
    key: Option<Key>,
    summary: Option<RunSummary>,
    follower: MetricsFollower,
    /// The follower's restarts already folded in.
    restarts: usize,
    events: EventSummary,
    curves: CurveBuilder,
}

impl Cached {
    fn new(dir: &Path) -> Self {
        Self {
            key: None,
            summary: None,
            follower: MetricsFollower::new(&RunDir::new(dir).metrics()),
            restarts: 0,
            events: EventSummary::default(),
            curves: CurveBuilder::default(),
        }
    }

    /// Folds the new events in (all of them, in bounded reads); why the file cannot
    /// be read, if so.
    fn follow(&mut self) -> Option<String> {
        loop {
            match self.follower.poll() {
                Ok(events) => {
                    if self.follower.restarts() != self.restarts {
                        self.restarts = self.follower.restarts();
                        self.events = EventSummary::default();
                        self.curves = CurveBuilder::default();
                    }
                    for e in &events {
                        self.events.apply(e);
                        self.curves.apply(e);
                    }
                    if self.follower.caught_up() {
                        return None;
                    }
                }
                Err(MetricsError::Io { source, .. }) => return Some(source.to_string()),
                Err(e) => return Some(e.to_string()),
            }
        }
    }
}

/// The folder's runs, from the cache where nothing changed.
#[derive(Default)]
pub struct Lister {
    cache: HashMap<PathBuf, Cached>,
}

impl Lister {
    pub fn list(&mut self, dir: &Path) -> Result<RunsListing, String> {
        let dirs =
            runs::run_dirs(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        self.cache.retain(|p, _| dirs.contains(p));
        let mut out = Vec::with_capacity(dirs.len());
        for d in dirs {
            let key = key_of(&d);
            let c = self
                .cache
                .entry(d.clone())
                .or_insert_with(|| Cached::new(&d));
            if c.key.as_ref() != Some(&key) {
                let unreadable = c.follow();
                c.summary = Some(runs::summary_of(&d, &c.events, unreadable));
                c.key = Some(key);
            }
            if let Some(summary) = &c.summary {
                out.push(RunEntry {
                    summary: summary.clone(),
                    curves: c.curves.curves(),
                });
            }
        }
        let listed_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(RunsListing {
            runs: out,
            listed_at,
        })
    }
}

/// The settings that differ between two runs' `config.toml`.
pub fn config_diff(a: &Path, b: &Path) -> Result<Vec<SettingDiff>, String> {
    let ca = settings::load(a).map_err(|e| e.to_string())?;
    let mut cb = settings::load(b).map_err(|e| e.to_string())?;
    // Each run's config.toml names the run itself: that is which run, not a setting.
    cb.train.run.clone_from(&ca.train.run);
    Ok(settings::diff(&ca, &cb))
}

fn watch(dir: &Path, rx: &Receiver<Request>, out: &Outbox) {
    let mut lister = Lister::default();
    loop {
        if !out.send(WorkerEvent::Runs(lister.list(dir))) {
            return;
        }
        let deadline = std::time::Instant::now() + EVERY;
        loop {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Request::Refresh) | Err(RecvTimeoutError::Timeout) => break,
                Ok(Request::Diff(a, b)) => {
                    let rows = config_diff(&a, &b);
                    if !out.send(WorkerEvent::RunsDiff { a, b, rows }) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::Config;
    use crate::train::events::TrainEvent;
    use crate::train::runs::RunStatus;

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

    fn append(run: &Path, events: &[TrainEvent]) {
        append_to(&run.join("metrics.jsonl"), events);
    }

    fn append_to(path: &Path, events: &[TrainEvent]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("metrics");
        for e in events {
            writeln!(f, "{}", serde_json::to_string(e).expect("json")).expect("write");
        }
    }

    fn write_config(run: &Path, c: &Config) {
        std::fs::write(run.join("config.toml"), toml::to_string(c).expect("toml")).expect("config");
    }

    #[test]
    fn lists_runs_follows_their_curves_and_diffs_their_configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for r in [&a, &b] {
            std::fs::create_dir(r).expect("run dir");
        }
        std::fs::create_dir(dir.path().join("not-a-run")).expect("dir");
        append(&a, &[step(1, 1.0), step(2, 0.5)]);
        append(&b, &[step(1, 2.0)]);
        let mut lister = Lister::default();
        let l = lister.list(dir.path()).expect("listing");
        let names: Vec<&str> = l.runs.iter().map(|r| r.summary.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(l.runs[0].curves.loss.len(), 2);
        assert_eq!(l.runs[0].summary.status, RunStatus::Interrupted);
        // Unchanged: the cached entry; appended: only the new lines are folded in.
        assert_eq!(lister.list(dir.path()).expect("listing").runs, l.runs);
        append(&a, &[step(3, 0.25)]);
        let l = lister.list(dir.path()).expect("listing");
        assert_eq!(l.runs[0].curves.loss.len(), 3);
        assert_eq!(l.runs[0].summary.step, 3);
        assert_eq!(l.runs[1].curves.loss.len(), 1);

        // `a` replaced by another run's log at least as long (renamed over it, then
        // rewritten in place): its curves and summary are the new log's alone.
        let other = dir.path().join("other.jsonl");
        let replacement: Vec<TrainEvent> = (10..14).map(|i| step(i, 4.0)).collect();
        append_to(&other, &replacement);
        std::fs::rename(&other, a.join("metrics.jsonl")).expect("rename");
        let l = lister.list(dir.path()).expect("listing");
        assert_eq!(l.runs[0].curves.loss.len(), 4);
        assert_eq!(l.runs[0].curves.loss[0].0, 10.0);
        assert_eq!(l.runs[0].summary.step, 13);
        let in_place: Vec<TrainEvent> = (20..24).map(|i| step(i, 4.0)).collect();
        let metrics = a.join("metrics.jsonl");
        let old_len = std::fs::metadata(&metrics).expect("meta").len();
        std::fs::write(&metrics, "").expect("truncate");
        append_to(&metrics, &in_place);
        assert_eq!(std::fs::metadata(&metrics).expect("meta").len(), old_len);
        let l = lister.list(dir.path()).expect("listing");
        let xs: Vec<f64> = l.runs[0].curves.loss.iter().map(|p| p.0).collect();
        assert_eq!(xs, [20.0, 21.0, 22.0, 23.0]);

        // Named pipes as the control file and the log of a third run: listed as
        // unreadable, on a thread with a deadline so a regression fails, not hangs.
        let c = dir.path().join("c");
        std::fs::create_dir(&c).expect("run dir");
        let fifos = ["control", "metrics.jsonl"].iter().all(|f| {
            std::process::Command::new("mkfifo")
                .arg(c.join(f))
                .status()
                .is_ok_and(|s| s.success())
        });
        if fifos {
            let (tx, rx) = std::sync::mpsc::channel();
            let root = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let mut lister = Lister::default();
                let _ = tx.send(lister.list(&root));
            });
            let l = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the Runs tab hung on a named pipe")
                .expect("listing");
            let row = &l.runs[2].summary;
            assert_eq!(row.status, RunStatus::Unreadable);
            assert!(
                row.message
                    .as_deref()
                    .is_some_and(|m| m.contains("not a regular file")),
                "{row:?}"
            );
        }

        let ca = Config::default();
        let mut cb = ca.clone();
        cb.train.lr = 0.25;
        write_config(&a, &ca);
        write_config(&b, &cb);
        let d = config_diff(&a, &b).expect("diff");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].key, "train.lr");
        assert!(config_diff(&a, &dir.path().join("not-a-run")).is_err());
    }
}
