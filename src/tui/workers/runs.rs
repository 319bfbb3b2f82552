//! The Runs tab's worker, started when the tab is first opened: every
//! [`EVERY`] (or at once on request) it lists the runs folder with
//! [`crate::train::runs::list`] and each run's curves, reading a run's
//! `metrics.jsonl` again only when its size or modification time changed (the curves
//! then follow the file incrementally); it also answers config diffs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Outbox, spawn};
use crate::run::folder::{ControlRequest, RunDir};
use crate::run::settings::{self, SettingDiff};
use crate::train::metrics_log::MetricsFollower;
use crate::train::runs::{self, RunSummary};
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

struct Cached {
    /// `None` until first read.
    key: Option<Key>,
    summary: Option<RunSummary>,
    follower: MetricsFollower,
    curves: CurveBuilder,
}

/// The folder's runs, from the cache where nothing changed.
#[derive(Default)]
pub struct Lister {
    cache: HashMap<PathBuf, Cached>,
}

impl Lister {
    pub fn list(&mut self, dir: &Path) -> Result<RunsListing, String> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir() && runs::is_run(p))
            .collect();
        dirs.sort();
        self.cache.retain(|p, _| dirs.contains(p));
        let mut out = Vec::with_capacity(dirs.len());
        for d in dirs {
            let key = key_of(&d);
            let c = self.cache.entry(d.clone()).or_insert_with(|| Cached {
                key: None,
                summary: None,
                follower: MetricsFollower::new(&RunDir::new(&d).metrics()),
                curves: CurveBuilder::default(),
            });
            if c.key.as_ref() != Some(&key) {
                let shrunk = c
                    .key
                    .as_ref()
                    .and_then(|k| k.len)
                    .zip(key.len)
                    .is_some_and(|(a, b)| b < a);
                if shrunk {
                    c.follower = MetricsFollower::new(&RunDir::new(&d).metrics());
                    c.curves = CurveBuilder::default();
                }
                c.summary = Some(runs::summarize(&d));
                match c.follower.poll() {
                    Ok(events) => events.iter().for_each(|e| c.curves.apply(e)),
                    Err(e) => tracing::debug!("{}: {e}", d.display()),
                }
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
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("metrics.jsonl"))
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
