//! The workers of the run the dashboard shows, started and stopped as one set: the
//! metrics follower, the dataset reader, the index (status, warm-up, builds and
//! searches), and the scorer and trainer started from its settings. Opening another
//! run (Enter on the Runs tab) drops the set and starts a new one on the outbox of the
//! new run's generation, so nothing of the old run lands in the new state.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{IndexWorker, Outbox, spawn_dataset, spawn_follower, spawn_scorer};
use crate::config::Config;
use crate::run::settings::{self, RunSettingsError};
use crate::tui::app::WorkerEvent;
use crate::tui::tabs::dataset::TripletRow;

/// The run the dashboard shows: its folder, its dataset, and the settings its index,
/// scoring and a training started with `t` use.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub run: PathBuf,
    pub data: PathBuf,
    pub config: Config,
}

impl Shown {
    /// The run at `run` as opened from the Runs tab: its own saved settings (the
    /// dataset it trained on, the recipe `t` resumes with), the dashboard's `[ui]`.
    /// A run without readable settings gets `dashboard` and `data`, and a note why.
    pub fn open(run: &Path, dashboard: &Config, data: &Path) -> (Self, Option<String>) {
        match settings::load(run) {
            Ok(mut config) => {
                config.ui = dashboard.ui.clone();
                let shown = Self {
                    run: run.to_path_buf(),
                    data: config.data.root.clone(),
                    config,
                };
                (shown, None)
            }
            Err(e) => {
                let why = match e {
                    RunSettingsError::NotARun { .. } => "it has no config.toml yet".to_string(),
                    RunSettingsError::Config(e) => e.to_string(),
                };
                let shown = Self {
                    run: run.to_path_buf(),
                    data: data.to_path_buf(),
                    config: dashboard.clone(),
                };
                let note = format!(
                    "{}: the dashboard's settings and dataset ({}) stand in for the run's: {why}",
                    run.display(),
                    data.display()
                );
                (shown, Some(note))
            }
        }
    }
}

/// The shown run's workers; dropping the set stops the follower (the others stop at
/// their next send, their outbox being stale by then).
pub struct RunWorkers {
    pub shown: Shown,
    out: Outbox,
    stop: Arc<AtomicBool>,
    index: IndexWorker,
}

impl RunWorkers {
    /// Starts the workers of `shown`, opened as `generation` (the app's), on an outbox
    /// of that generation: from now on only its events are the shown run's.
    pub fn spawn(shown: Shown, out: &Outbox, generation: u64) -> Self {
        let out = out.for_run(generation);
        let stop = Arc::new(AtomicBool::new(false));
        spawn_follower(&shown.run, out.clone(), Arc::clone(&stop));
        let seed = settings::load_or_fallback(&shown.run, &shown.config)
            .train
            .seed;
        spawn_dataset(
            shown.data.clone(),
            shown.config.data.gallery,
            seed,
            out.clone(),
        );
        let index = IndexWorker::spawn(
            shown.run.clone(),
            shown.data.clone(),
            shown.config.clone(),
            out.clone(),
        );
        Self {
            shown,
            out,
            stop,
            index,
        }
    }

    /// Opens the run at `run` as `generation` (see [`Shown::open`]); the event returned
    /// tells the app the run's dataset, before any of the workers' events.
    pub fn open(
        run: &Path,
        dashboard: &Config,
        data: &Path,
        out: &Outbox,
        generation: u64,
    ) -> (Self, WorkerEvent) {
        let (shown, note) = Shown::open(run, dashboard, data);
        let opened = WorkerEvent::OfRun {
            generation,
            event: Box::new(WorkerEvent::RunOpened {
                data: shown.data.clone(),
                note,
            }),
        };
        (Self::spawn(shown, out, generation), opened)
    }

    pub fn index(&self) -> &IndexWorker {
        &self.index
    }

    /// Scores `rows` under the run's newest checkpoint.
    pub fn score(&self, rows: Vec<TripletRow>) {
        spawn_scorer(
            self.shown.run.clone(),
            self.shown.config.clone(),
            rows,
            self.out.clone(),
        );
    }

    /// Starts `vitrine train` (`exe`) on the run with its settings.
    pub fn start_trainer(&self, exe: &Path) -> std::io::Result<Child> {
        super::spawn_trainer(exe, &self.shown.config, &self.shown.data, &self.shown.run)
    }
}

impl Drop for RunWorkers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
