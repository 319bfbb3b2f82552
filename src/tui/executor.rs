//! The dashboard's side effects: [`Executor`] carries out the [`Command`]s that
//! [`App::update`] returns (starting the trainer process, writing the control file,
//! asking the workers for work, opening another run) and feeds their immediate
//! results back as actions. The event loop (`runtime`) owns it.

use std::process::Child;

use super::app::{Action, App, Command, WorkerEvent};
use super::workers::{Outbox, RunWorkers, RunsWorker, ThumbWorker};
use crate::config::Config;
use crate::run::folder::RunDir;

/// Runs the commands `update` returned.
pub struct Executor {
    /// The dashboard's settings (a run opened without settings of its own uses them).
    config: Config,
    out: Outbox,
    /// The workers of the run shown.
    run: RunWorkers,
    thumbs: Option<ThumbWorker>,
    /// Started when the Runs tab is first opened.
    runs: Option<RunsWorker>,
    children: Vec<Child>,
}

impl Executor {
    /// The dashboard's settings, the worker outbox, the shown run's workers and the
    /// thumbnail decoder (none without terminal graphics).
    pub fn new(config: Config, out: Outbox, run: RunWorkers, thumbs: Option<ThumbWorker>) -> Self {
        Self {
            config,
            out,
            run,
            thumbs,
            runs: None,
            children: Vec::new(),
        }
    }

    pub fn run(&mut self, app: &mut App, commands: Vec<Command>) {
        let mut queue = commands;
        while let Some(c) = queue.pop() {
            let more = self.one(app, c);
            queue.extend(more);
        }
    }

    fn one(&mut self, app: &mut App, command: Command) -> Vec<Command> {
        let run = RunDir::new(&self.run.shown.run);
        match command {
            Command::StartTraining => {
                let exe = std::env::current_exe();
                let spawned = exe.and_then(|exe| self.run.start_trainer(&exe));
                let event = match spawned {
                    Ok(child) => {
                        let pid = child.id();
                        tracing::info!("trainer started, pid {pid}");
                        self.children.push(child);
                        WorkerEvent::Spawned(Ok(pid))
                    }
                    Err(e) => {
                        tracing::error!("cannot start training: {e}");
                        WorkerEvent::Spawned(Err(e.to_string()))
                    }
                };
                app.update(Action::Worker(event))
            }
            Command::Control(req) => {
                if let Err(e) = run.send_control(req) {
                    return app.update(Action::Worker(WorkerEvent::Status(format!(
                        "cannot write {}: {e}",
                        run.control().display()
                    ))));
                }
                Vec::new()
            }
            Command::BuildIndex => {
                self.run.index().build();
                Vec::new()
            }
            Command::Search { path, item } => {
                self.run.index().search(path, item);
                Vec::new()
            }
            Command::ComputeFailures { token } => {
                self.run.index().failures(token, app.search.queries.clone());
                Vec::new()
            }
            Command::ScoreTriplets => {
                self.run.score(app.triplets.rows.clone());
                Vec::new()
            }
            Command::LoadThumb(key) => {
                if let Some(t) = &self.thumbs {
                    t.request(key);
                }
                Vec::new()
            }
            Command::WatchRuns(dir) => {
                match &self.runs {
                    Some(w) => w.refresh(),
                    None => self.runs = Some(RunsWorker::spawn(dir, self.out.clone())),
                }
                Vec::new()
            }
            Command::DiffRuns { a, b } => {
                self.runs
                    .get_or_insert_with(|| {
                        RunsWorker::spawn(app.runs.dir.clone(), self.out.clone())
                    })
                    .diff(a, b);
                Vec::new()
            }
            Command::OpenRun { run, generation } => {
                let data = self.run.shown.data.clone();
                let (workers, opened) =
                    RunWorkers::open(&run, &self.config, &data, &self.out, generation);
                tracing::info!(
                    "showing run {} (data {})",
                    run.display(),
                    workers.shown.data.display()
                );
                // Dropping the old set stops its follower; its other workers stop at
                // their next send.
                self.run = workers;
                app.update(Action::Worker(opened))
            }
        }
    }

    /// Reaps trainers started here that have exited (no zombies while we run).
    pub fn reap(&mut self) {
        self.children.retain_mut(|c| match c.try_wait() {
            Ok(Some(status)) => {
                tracing::info!("trainer pid {} exited: {status}", c.id());
                false
            }
            Ok(None) => true,
            Err(_) => false,
        });
    }
}
