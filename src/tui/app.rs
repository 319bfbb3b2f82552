//! The dashboard's state and the only place it changes: [`App`] composes each tab's
//! state (in [`super::tabs`]) and [`App::update`] takes an [`Action`] (from the keymap
//! or a worker) and returns the [`Command`]s the runtime must carry out (start a
//! process, run a search…). Views only read `&App`.

use std::path::PathBuf;

use crate::config::PlotMarker;
use crate::run::folder::ControlRequest;
use crate::run::settings::SettingDiff;
use crate::train::events::TrainEvent;
use crate::tui::tabs::dataset::{DatasetInfo, Loadable};
use crate::tui::tabs::failures::FailuresUpdate;
use crate::tui::tabs::runs::{RunsListing, RunsState, same_run};
use crate::tui::tabs::search::{GRID_COLS, IndexStatus, ModelLoad, SearchResults, SearchState};
use crate::tui::tabs::train::{Outcome, TrainState, TrainerStatus};
use crate::tui::tabs::triplets::{ScoreStatus, TripletScore, TripletsState};
use crate::tui::thumb_cache::{Thumb, ThumbCache, ThumbKey, ThumbSlot};

/// Rows moved by PgUp / PgDn.
pub const PAGE: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tab {
    Train,
    Dataset,
    Triplets,
    Search,
    Runs,
}

impl Tab {
    pub const ALL: [Tab; 5] = [
        Tab::Train,
        Tab::Dataset,
        Tab::Triplets,
        Tab::Search,
        Tab::Runs,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Train => "Train",
            Tab::Dataset => "Dataset",
            Tab::Triplets => "Triplets",
            Tab::Search => "Search",
            Tab::Runs => "Runs",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Tab::Train => 0,
            Tab::Dataset => 1,
            Tab::Triplets => 2,
            Tab::Search => 3,
            Tab::Runs => 4,
        }
    }

    fn offset(self, by: isize) -> Tab {
        let n = Self::ALL.len() as isize;
        Self::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }
}

/// What workers report.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// New lines of `metrics.jsonl` (the first batch replays the whole file).
    Train(Vec<TrainEvent>),
    /// The metrics file could not be read.
    MetricsError(String),
    /// The trainer process (from the run's lock) and the pending control request.
    Trainer {
        pid: Option<u32>,
        control: ControlRequest,
    },
    /// A trainer process this dashboard started.
    Spawned(Result<u32, String>),
    Dataset(Box<Result<DatasetInfo, String>>),
    /// Scores of triplet rows (partial batches while running).
    Scores {
        weights: String,
        scores: Vec<(usize, TripletScore)>,
        done: usize,
        total: usize,
    },
    ScoresFailed(String),
    Index(IndexStatus),
    /// The search worker loading its model and index.
    Model(ModelLoad),
    Search(Result<SearchResults, String>),
    /// The failures computation asked as `token`.
    Failures {
        token: u64,
        update: FailuresUpdate,
    },
    Thumb(ThumbKey, Result<Thumb, String>),
    /// The runs folder listed, with each run's curves.
    Runs(Result<RunsListing, String>),
    /// The config diff of runs `a` and `b` the Runs tab asked for.
    RunsDiff {
        a: PathBuf,
        b: PathBuf,
        rows: Result<Vec<SettingDiff>, String>,
    },
    /// A message for the status line.
    Status(String),
    /// The run opened from the Runs tab has its settings read: the dataset its tabs
    /// show, and a note when the dashboard's settings stand in for missing ones.
    RunOpened {
        data: PathBuf,
        note: Option<String>,
    },
    /// An event of the workers of the run opened as `generation`; dropped once
    /// another run is open.
    OfRun {
        generation: u64,
        event: Box<WorkerEvent>,
    },
}

/// Everything that changes the state.
#[derive(Debug, Clone)]
pub enum Action {
    NextTab,
    PrevTab,
    GoTab(Tab),
    ToggleHelp,
    /// `q`: quits, or asks first while training runs.
    Quit,
    /// The quit question's answer.
    ConfirmQuit {
        stop_training: bool,
    },
    /// Esc: close the overlay, the detail, the input.
    Back,
    StartTraining,
    TogglePause,
    StopTraining,
    BuildIndex,
    ToggleHistory,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    NextFilter,
    PrevFilter,
    ToggleHardest,
    /// Space on the Runs tab: mark / unmark the selected run.
    ToggleMark,
    /// `d` on the Runs tab: the config diff of two runs.
    Diff,
    /// `f` on the Search tab: the failures view.
    ToggleFailures,
    /// `c` in the failures view: the per-category table.
    ToggleCategories,
    StartInput,
    Input(char),
    InputBackspace,
    InputClear,
    /// The thumbnails the last frame wanted.
    NeedThumbs(Vec<ThumbKey>),
    Resize,
    Worker(WorkerEvent),
}

/// Side effects for the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    StartTraining,
    Control(ControlRequest),
    BuildIndex,
    /// Search with an image; `item` is its dataset item when known (hit markers).
    Search {
        path: PathBuf,
        item: Option<String>,
    },
    ScoreTriplets,
    /// Rank every test query's item with the search model and index (request `token`).
    ComputeFailures {
        token: u64,
    },
    LoadThumb(ThumbKey),
    /// List the runs folder now, and every few seconds from then on.
    WatchRuns(PathBuf),
    /// The config diff of two runs.
    DiffRuns {
        a: PathBuf,
        b: PathBuf,
    },
    /// Show `run` from now on: stop the old run's workers, read the run's settings
    /// and start its workers on `generation`'s outbox. Nothing in the run is started,
    /// stopped or locked.
    OpenRun {
        run: PathBuf,
        generation: u64,
    },
}

/// How the dashboard was opened.
#[derive(Debug, Clone, PartialEq)]
pub struct AppOptions {
    pub run: PathBuf,
    pub data: PathBuf,
    /// `vitrine watch`: no start/pause/stop/index.
    pub read_only: bool,
    /// Build the index when a training this dashboard started finishes (`demo`).
    pub auto_index: bool,
    /// Draw thumbnails (false: names only).
    pub images: bool,
    /// How thumbnails are drawn, for the status line.
    pub images_label: String,
    pub plot_marker: PlotMarker,
    /// The Runs tab's folder (`--runs`, default the run's parent).
    pub runs: PathBuf,
}

impl AppOptions {
    pub fn new(run: PathBuf, data: PathBuf) -> Self {
        Self {
            runs: RunsState::dir_of(&run),
            run,
            data,
            read_only: false,
            auto_index: false,
            images: true,
            images_label: "halfblocks".into(),
            plot_marker: PlotMarker::Braille,
        }
    }
}

#[derive(Debug)]
pub struct App {
    pub opts: AppOptions,
    pub tab: Tab,
    pub help: bool,
    pub quit_prompt: bool,
    pub should_quit: bool,
    /// Send `stop` to the trainer before leaving.
    pub stop_on_quit: bool,
    pub train: TrainState,
    pub trainer: TrainerStatus,
    pub metrics_error: Option<String>,
    /// Loss chart: full history instead of the recent window.
    pub full_history: bool,
    pub dataset: Loadable<DatasetInfo>,
    pub triplets: TripletsState,
    pub search: SearchState,
    pub runs: RunsState,
    pub index: IndexStatus,
    pub status: Option<String>,
    pub thumbs: ThumbCache,
    /// How many times a run was opened from the Runs tab: the shown run's workers
    /// tag their events with it, so a late event of an earlier run is dropped.
    pub generation: u64,
}

impl App {
    pub fn new(opts: AppOptions) -> Self {
        let runs = RunsState::new(opts.runs.clone());
        Self {
            opts,
            tab: Tab::Train,
            help: false,
            quit_prompt: false,
            should_quit: false,
            stop_on_quit: false,
            train: TrainState::default(),
            trainer: TrainerStatus::default(),
            metrics_error: None,
            full_history: false,
            dataset: Loadable::Loading,
            triplets: TripletsState::default(),
            search: SearchState::default(),
            runs,
            index: IndexStatus::Unknown,
            status: None,
            thumbs: ThumbCache::default(),
            generation: 0,
        }
    }

    /// Whether a text input has the keyboard (keys are typed, not commands).
    pub fn typing(&self) -> bool {
        self.tab == Tab::Search && self.search.input.is_some()
    }

    pub fn thumb(&self, key: &ThumbKey) -> Option<&ThumbSlot> {
        self.thumbs.get(key)
    }

    fn say(&mut self, msg: impl Into<String>) {
        self.status = Some(msg.into());
    }

    pub fn update(&mut self, action: Action) -> Vec<Command> {
        let mut out = Vec::new();
        let before = self.tab;
        match action {
            Action::NextTab => self.tab = self.tab.offset(1),
            Action::PrevTab => self.tab = self.tab.offset(-1),
            Action::GoTab(t) => self.tab = t,
            Action::ToggleHelp => self.help = !self.help,
            Action::Quit => {
                if self.trainer.running() && !self.opts.read_only {
                    self.quit_prompt = true;
                    self.help = false;
                } else {
                    self.should_quit = true;
                }
            }
            Action::ConfirmQuit { stop_training } => {
                if self.quit_prompt {
                    self.quit_prompt = false;
                    self.stop_on_quit = stop_training;
                    self.should_quit = true;
                }
            }
            Action::Back => self.back(),
            Action::StartTraining => self.start_training(&mut out),
            Action::TogglePause => self.toggle_pause(&mut out),
            Action::StopTraining => self.stop_training(&mut out),
            Action::BuildIndex => self.build_index(&mut out),
            Action::ToggleHistory => self.full_history = !self.full_history,
            Action::Up => self.step(-1, -(GRID_COLS as isize)),
            Action::Down => self.step(1, GRID_COLS as isize),
            Action::Left => self.grid(-1),
            Action::Right => self.grid(1),
            Action::PageUp => self.step(-(PAGE as isize), -(GRID_COLS as isize)),
            Action::PageDown => self.step(PAGE as isize, GRID_COLS as isize),
            Action::Home => self.step(isize::MIN / 2, isize::MIN / 2),
            Action::End => self.step(isize::MAX / 2, isize::MAX / 2),
            Action::Enter => match self.tab {
                Tab::Search => {
                    if let Some((path, item)) = self.search.enter() {
                        out.push(Command::Search { path, item });
                    }
                }
                Tab::Runs => {
                    if let Some(run) = self.runs.selected_run().map(|r| r.summary.path.clone()) {
                        self.open_run(run, &mut out);
                    }
                }
                Tab::Train | Tab::Dataset | Tab::Triplets => {}
            },
            Action::NextFilter | Action::PrevFilter => {
                if self.tab == Tab::Triplets {
                    self.triplets
                        .cycle_filter(matches!(action, Action::NextFilter));
                }
            }
            Action::ToggleHardest => {
                if self.tab == Tab::Triplets {
                    self.triplets.toggle_hardest();
                }
            }
            Action::ToggleMark => {
                if self.tab == Tab::Runs {
                    self.runs.toggle_mark();
                }
            }
            Action::Diff => {
                if self.tab == Tab::Runs {
                    match self.runs.diff_pair() {
                        Ok((a, b)) => {
                            self.runs.open_diff(&a, &b);
                            out.push(Command::DiffRuns { a, b });
                        }
                        Err(msg) => self.say(msg),
                    }
                }
            }
            Action::ToggleFailures => {
                if self.tab == Tab::Search {
                    self.search.failures.toggle();
                }
            }
            Action::ToggleCategories => {
                if self.tab == Tab::Search {
                    self.search.failures.toggle_categories();
                }
            }
            Action::StartInput => {
                if self.tab == Tab::Search {
                    self.search.start_input();
                }
            }
            Action::Input(c) => {
                if let Some(s) = &mut self.search.input {
                    s.push(c);
                }
            }
            Action::InputBackspace => {
                if let Some(s) = &mut self.search.input {
                    s.pop();
                }
            }
            Action::InputClear => {
                if let Some(s) = &mut self.search.input {
                    s.clear();
                }
            }
            Action::NeedThumbs(keys) => {
                out.extend(self.thumbs.want(keys).into_iter().map(Command::LoadThumb));
            }
            Action::Resize => {}
            Action::Worker(event) => self.worker(event, &mut out),
        }
        self.housekeeping(before, &mut out);
        out
    }

    fn back(&mut self) {
        if self.help {
            self.help = false;
        } else if self.quit_prompt {
            self.quit_prompt = false;
        } else if self.tab == Tab::Search {
            self.search.back();
        } else if self.tab == Tab::Runs {
            self.runs.diff = None;
        }
    }

    /// Up/Down (and pages) in the list of the current tab; in the result grid a
    /// row of the grid.
    fn step(&mut self, by: isize, grid_by: isize) {
        match self.tab {
            Tab::Triplets => self.triplets.step(by),
            Tab::Search => self.search.step(by, grid_by),
            Tab::Runs => self.runs.step(by),
            Tab::Train | Tab::Dataset => {}
        }
    }

    /// Left/Right in the result grid.
    fn grid(&mut self, by: isize) {
        if self.tab == Tab::Search {
            self.search.grid(by);
        }
    }

    /// Makes `run` the shown run: everything that belongs to a run starts afresh (as
    /// [`App::new`] makes it), the rest (the Runs tab, thumbnails, chart choices)
    /// stays; the Train tab then follows it.
    fn open_run(&mut self, run: PathBuf, out: &mut Vec<Command>) {
        let name = run.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if same_run(&run, &self.opts.run) {
            self.tab = Tab::Train;
            self.say(format!("{name} is the run shown"));
            return;
        }
        let opts = AppOptions {
            run: run.clone(),
            ..self.opts.clone()
        };
        let old = std::mem::replace(self, App::new(opts));
        self.runs = old.runs;
        self.runs.diff = None;
        self.thumbs = old.thumbs;
        self.full_history = old.full_history;
        self.generation = old.generation + 1;
        self.tab = Tab::Train;
        self.say(format!("opened run {name} (t trains it)"));
        out.push(Command::OpenRun {
            run,
            generation: self.generation,
        });
    }

    fn refuse_read_only(&mut self) -> bool {
        if self.opts.read_only {
            self.say("read-only: `vitrine watch` only follows the run");
        }
        self.opts.read_only
    }

    fn start_training(&mut self, out: &mut Vec<Command>) {
        if self.refuse_read_only() {
            return;
        }
        if let Some(pid) = self.trainer.pid {
            if self.trainer.control == ControlRequest::Pause {
                self.trainer.control = ControlRequest::Run;
                out.push(Command::Control(ControlRequest::Run));
                self.say("continuing training");
            } else {
                self.say(format!("training is already running (pid {pid})"));
            }
            return;
        }
        if self.trainer.starting {
            self.say("training is starting…");
            return;
        }
        self.trainer.start_here();
        out.push(Command::StartTraining);
        self.say("starting training in its own process (it keeps running if you quit)");
    }

    fn toggle_pause(&mut self, out: &mut Vec<Command>) {
        if self.refuse_read_only() {
            return;
        }
        if !self.trainer.running() {
            self.say("no training is running (t starts it)");
            return;
        }
        let next = if self.trainer.control == ControlRequest::Pause {
            ControlRequest::Run
        } else {
            ControlRequest::Pause
        };
        self.trainer.control = next;
        out.push(Command::Control(next));
        self.say(if next == ControlRequest::Pause {
            "pausing after this step (p continues)"
        } else {
            "continuing training"
        });
    }

    fn stop_training(&mut self, out: &mut Vec<Command>) {
        if self.refuse_read_only() {
            return;
        }
        if !self.trainer.running() {
            self.say("no training is running");
            return;
        }
        self.trainer.control = ControlRequest::Stop;
        out.push(Command::Control(ControlRequest::Stop));
        self.say("stopping: the trainer writes a checkpoint, then exits");
    }

    fn build_index(&mut self, out: &mut Vec<Command>) {
        if self.refuse_read_only() {
            return;
        }
        if matches!(self.index, IndexStatus::Building { .. }) {
            self.say("the index is being built");
            return;
        }
        self.index = IndexStatus::Building { done: 0, total: 0 };
        out.push(Command::BuildIndex);
        self.say("building the search index in the background");
    }

    fn worker(&mut self, event: WorkerEvent, out: &mut Vec<Command>) {
        match event {
            WorkerEvent::Train(events) => {
                for e in &events {
                    self.train.apply(e);
                    if self.trainer.ended_here(e) && self.opts.auto_index {
                        self.build_index(out);
                    }
                }
                if let Some(Outcome::Failed { message, .. }) = &self.train.outcome
                    && events.iter().any(TrainEvent::is_terminal)
                {
                    self.status = Some(format!("training failed: {message}"));
                }
            }
            WorkerEvent::MetricsError(e) => self.metrics_error = Some(e),
            WorkerEvent::Trainer { pid, control } => self.trainer.seen(pid, control),
            WorkerEvent::Spawned(Ok(pid)) => {
                self.trainer.spawned(pid);
                self.say(format!(
                    "training started (pid {pid}); its log: RUN/vitrine.log"
                ));
            }
            WorkerEvent::Spawned(Err(e)) => {
                self.trainer.spawn_failed();
                self.say(format!("cannot start training: {e}"));
            }
            WorkerEvent::Dataset(result) => match *result {
                Ok(info) => {
                    self.triplets = TripletsState::new(info.triplets.clone());
                    self.search.queries.clone_from(&info.queries);
                    self.search.selected = 0;
                    self.dataset = Loadable::Ready(info);
                }
                Err(e) => self.dataset = Loadable::Failed(e),
            },
            WorkerEvent::Scores {
                weights,
                scores,
                done,
                total,
            } => self.triplets.apply_scores(weights, scores, done, total),
            WorkerEvent::ScoresFailed(e) => self.triplets.status = ScoreStatus::Failed(e),
            WorkerEvent::Index(status) => {
                if let IndexStatus::Ready { count } = status
                    && matches!(self.index, IndexStatus::Building { .. })
                {
                    self.say(format!(
                        "index ready: {count} gallery images; Search works now"
                    ));
                }
                if let IndexStatus::Failed(e) = &status {
                    self.say(format!("index: {e}"));
                }
                if matches!(status, IndexStatus::Ready { .. }) && status != self.index {
                    self.search.failures.index_changed();
                }
                self.index = status;
            }
            WorkerEvent::Model(load) => self.search.model_event(load),
            WorkerEvent::Search(result) => self.search.answered(result),
            WorkerEvent::Failures { token, update } => self.search.failures.apply(token, update),
            WorkerEvent::Thumb(key, result) => self.thumbs.arrived(key, result),
            WorkerEvent::Runs(listing) => self.runs.listed(listing),
            WorkerEvent::RunsDiff { a, b, rows } => self.runs.diff_arrived(&a, &b, rows),
            WorkerEvent::Status(msg) => self.say(msg),
            WorkerEvent::RunOpened { data, note } => {
                self.opts.data = data;
                if let Some(n) = note {
                    self.say(n);
                }
            }
            WorkerEvent::OfRun { generation, event } => {
                if generation == self.generation {
                    self.worker(*event, out);
                } else {
                    tracing::debug!("dropped a late event of the run opened as {generation}");
                }
            }
        }
    }

    /// Work that follows from the state: score the triplets under the newest
    /// checkpoint while the Triplets tab is open; rank the test queries when the
    /// failures view is open on an index not ranked yet; list the runs folder when the
    /// Runs tab opens (the worker starts the first time and keeps it fresh from then on).
    fn housekeeping(&mut self, before: Tab, out: &mut Vec<Command>) {
        if self.tab == Tab::Runs && (!self.runs.watching || before != Tab::Runs) {
            self.runs.watching = true;
            out.push(Command::WatchRuns(self.runs.dir.clone()));
        }
        if self.tab == Tab::Triplets && self.triplets.ask_scores(self.train.latest_checkpoint()) {
            out.push(Command::ScoreTriplets);
        }
        if self.tab == Tab::Search {
            let index_ready = matches!(self.index, IndexStatus::Ready { .. });
            if let Some(token) = self.search.ask_failures(index_ready) {
                out.push(Command::ComputeFailures { token });
            }
        }
    }
}
