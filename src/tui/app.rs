//! The dashboard's state and the only place it changes: [`App::update`] takes an
//! [`Action`] (from the keymap or a worker) and returns the [`Command`]s the runtime
//! must carry out (start a process, run a search…). Views only read `&App`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use crate::data::deepfashion::SplitSummary;
use crate::train::events::{StopReason, TrainEvent};
use crate::train::run_dir::ControlRequest;
use crate::tui::settings::PlotMarker;
use crate::tui::train_state::{Outcome, TrainState};

/// Thumbnails kept in memory (oldest dropped first).
pub const THUMB_CACHE: usize = 400;
/// Rows moved by PgUp / PgDn.
pub const PAGE: usize = 10;
/// Results asked of the index.
pub const TOP_K: usize = 20;
/// Columns of the result grid.
pub const GRID_COLS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tab {
    Train,
    Dataset,
    Triplets,
    Search,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Train, Tab::Dataset, Tab::Triplets, Tab::Search];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Train => "Train",
            Tab::Dataset => "Dataset",
            Tab::Triplets => "Triplets",
            Tab::Search => "Search",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Tab::Train => 0,
            Tab::Dataset => 1,
            Tab::Triplets => 2,
            Tab::Search => 3,
        }
    }

    fn offset(self, by: isize) -> Tab {
        let n = Self::ALL.len() as isize;
        Self::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }
}

/// One dataset image as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub item_id: String,
    /// Small category (`Sub_category`).
    pub category: String,
    /// Big category (`CATEGORY`).
    pub big: String,
    /// Crop box from the annotations (the model sees the crop).
    pub bbox: Option<crate::data::deepfashion::BBox>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripletRow {
    pub anchor: ImageInfo,
    pub positive: ImageInfo,
    pub negative: ImageInfo,
}

/// Distances between unit embeddings and the triplet loss under a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripletScore {
    pub d_ap: f32,
    pub d_an: f32,
    pub loss: f32,
}

/// What the dataset worker reads once.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    pub root: PathBuf,
    pub summary: SplitSummary,
    /// Training triplets (the sampler's first epoch, capped).
    pub triplets: Vec<TripletRow>,
    /// Test consumer images: the standard protocol's queries.
    pub queries: Vec<ImageInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Loadable<T> {
    Loading,
    Ready(T),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScoreStatus {
    Idle,
    Running {
        weights: String,
        done: usize,
        total: usize,
    },
    Done {
        weights: String,
    },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TripletsState {
    pub rows: Vec<TripletRow>,
    pub scores: Vec<Option<TripletScore>>,
    /// Rows shown, in order (filter and ordering applied).
    pub view: Vec<usize>,
    /// Index into `view`.
    pub selected: usize,
    /// Small categories present, sorted.
    pub categories: Vec<String>,
    /// Index into `categories`.
    pub filter: Option<usize>,
    /// Largest loss first.
    pub hardest: bool,
    pub status: ScoreStatus,
    /// Newest checkpoint step (from the events) when the scores were asked for
    /// (`Some(None)`: there was none); a newer checkpoint asks again.
    pub scored_for: Option<Option<usize>>,
}

impl Default for TripletsState {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            scores: Vec::new(),
            view: Vec::new(),
            selected: 0,
            categories: Vec::new(),
            filter: None,
            hardest: false,
            status: ScoreStatus::Idle,
            scored_for: None,
        }
    }
}

impl TripletsState {
    fn rebuild_view(&mut self) {
        let keep = self.view.get(self.selected).copied();
        let cat = self.filter.and_then(|f| self.categories.get(f));
        self.view = (0..self.rows.len())
            .filter(|&i| cat.is_none_or(|c| &self.rows[i].anchor.category == c))
            .collect();
        if self.hardest {
            let loss = |i: usize| self.scores.get(i).copied().flatten().map(|s| s.loss);
            // Scored rows by loss (largest first), unscored ones after, stable.
            self.view.sort_by(|&a, &b| match (loss(a), loss(b)) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
        }
        self.selected = keep
            .and_then(|k| self.view.iter().position(|&v| v == k))
            .unwrap_or(0);
    }

    pub fn selected_row(&self) -> Option<(usize, &TripletRow)> {
        let i = *self.view.get(self.selected)?;
        Some((i, &self.rows[i]))
    }

    /// Mean loss and share of active triplets among the scored rows in view.
    pub fn summary(&self) -> Option<(f32, f32, usize)> {
        let scored: Vec<TripletScore> = self
            .view
            .iter()
            .filter_map(|&i| self.scores.get(i).copied().flatten())
            .collect();
        if scored.is_empty() {
            return None;
        }
        let n = scored.len() as f32;
        let mean = scored.iter().map(|s| s.loss).sum::<f32>() / n;
        let active = scored.iter().filter(|s| s.loss > 0.0).count() as f32 / n;
        Some((mean, active, scored.len()))
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct HitInfo {
    pub rank: usize,
    pub score: f32,
    pub path: PathBuf,
    pub item_id: String,
    pub category: String,
    /// Same item as the query.
    pub is_match: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub query: PathBuf,
    /// The query's item when it is a dataset image.
    pub query_item: Option<String>,
    pub hits: Vec<HitInfo>,
    pub millis: f64,
}

impl SearchResults {
    /// Rank of the first hit of the query's item.
    pub fn first_match(&self) -> Option<usize> {
        self.hits.iter().find(|h| h.is_match).map(|h| h.rank)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Queries,
    Results,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IndexStatus {
    Unknown,
    Missing,
    Building { done: usize, total: usize },
    Ready { count: usize },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchState {
    pub queries: Vec<ImageInfo>,
    pub selected: usize,
    /// A path being typed after `/`.
    pub input: Option<String>,
    pub focus: Focus,
    pub results: Option<SearchResults>,
    /// Selected result (index into the hits).
    pub hit: usize,
    /// The selected result shown large.
    pub detail: bool,
    /// A search in flight.
    pub pending: Option<PathBuf>,
    pub error: Option<String>,
}

impl Default for SearchState {
    fn default() -> Self {
        Self {
            queries: Vec::new(),
            selected: 0,
            input: None,
            focus: Focus::Queries,
            results: None,
            hit: 0,
            detail: false,
            pending: None,
            error: None,
        }
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
}

impl Default for TrainerStatus {
    fn default() -> Self {
        Self {
            pid: None,
            ours: false,
            control: ControlRequest::Run,
            starting: false,
        }
    }
}

impl TrainerStatus {
    pub fn running(&self) -> bool {
        self.pid.is_some()
    }
}

/// A thumbnail: an image fitted to a number of cells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThumbKey {
    pub path: PathBuf,
    pub cols: u16,
    pub rows: u16,
}

/// A thumbnail ready to draw (a ratatui-image protocol: kitty, sixel, iTerm2 or
/// half blocks), shared cheaply between frames.
#[derive(Clone)]
pub struct Thumb(pub Arc<ratatui_image::protocol::Protocol>);

impl std::fmt::Debug for Thumb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Thumb")
    }
}

#[derive(Debug, Clone)]
pub enum ThumbSlot {
    Loading,
    Ready(Thumb),
    Failed(String),
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
    Search(Result<SearchResults, String>),
    Thumb(ThumbKey, Result<Thumb, String>),
    /// A message for the status line.
    Status(String),
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
    LoadThumb(ThumbKey),
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
}

impl AppOptions {
    pub fn new(run: PathBuf, data: PathBuf) -> Self {
        Self {
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
    pub dataset: Loadable<DatasetInfo>,
    pub triplets: TripletsState,
    pub search: SearchState,
    pub index: IndexStatus,
    /// Loss chart: full history instead of the recent window.
    pub full_history: bool,
    pub status: Option<String>,
    pub thumbs: HashMap<ThumbKey, ThumbSlot>,
    thumb_order: VecDeque<ThumbKey>,
    /// Thumbnails that could not be decoded.
    pub unreadable: usize,
    /// A training started here is running: its end may build the index.
    started_here: bool,
}

impl App {
    pub fn new(opts: AppOptions) -> Self {
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
            dataset: Loadable::Loading,
            triplets: TripletsState::default(),
            search: SearchState::default(),
            index: IndexStatus::Unknown,
            full_history: false,
            status: None,
            thumbs: HashMap::new(),
            thumb_order: VecDeque::new(),
            unreadable: 0,
            started_here: false,
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
            Action::Enter => self.enter(&mut out),
            Action::NextFilter | Action::PrevFilter => {
                let n = self.triplets.categories.len();
                if self.tab == Tab::Triplets && n > 0 {
                    // None → 0 → … → n-1 → None.
                    let cur = self.triplets.filter.map_or(n, |f| f);
                    let next = if matches!(action, Action::NextFilter) {
                        (cur + 1) % (n + 1)
                    } else {
                        (cur + n) % (n + 1)
                    };
                    self.triplets.filter = (next < n).then_some(next);
                    self.triplets.rebuild_view();
                }
            }
            Action::ToggleHardest => {
                if self.tab == Tab::Triplets {
                    self.triplets.hardest = !self.triplets.hardest;
                    self.triplets.rebuild_view();
                }
            }
            Action::StartInput => {
                if self.tab == Tab::Search {
                    self.search.input = Some(String::new());
                    self.search.detail = false;
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
                for key in keys {
                    if !self.thumbs.contains_key(&key) {
                        self.thumbs.insert(key.clone(), ThumbSlot::Loading);
                        self.thumb_order.push_back(key.clone());
                        out.push(Command::LoadThumb(key));
                    }
                }
                while self.thumb_order.len() > THUMB_CACHE {
                    if let Some(old) = self.thumb_order.pop_front() {
                        self.thumbs.remove(&old);
                    }
                }
            }
            Action::Resize => {}
            Action::Worker(event) => self.worker(event, &mut out),
        }
        self.housekeeping(&mut out);
        out
    }

    fn back(&mut self) {
        if self.help {
            self.help = false;
        } else if self.quit_prompt {
            self.quit_prompt = false;
        } else if self.tab == Tab::Search {
            let s = &mut self.search;
            if s.input.is_some() {
                s.input = None;
            } else if s.detail {
                s.detail = false;
            } else {
                s.focus = Focus::Queries;
            }
        }
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
        self.trainer.starting = true;
        self.trainer.ours = true;
        self.trainer.control = ControlRequest::Run;
        self.started_here = true;
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

    /// Up/Down (and pages) in the list of the current tab; in the result grid a
    /// row of the grid.
    fn step(&mut self, by: isize, grid_by: isize) {
        match self.tab {
            Tab::Triplets => {
                let t = &mut self.triplets;
                t.selected = moved(t.selected, by, t.view.len());
            }
            Tab::Search if !self.search.detail => {
                let s = &mut self.search;
                match s.focus {
                    Focus::Queries => s.selected = moved(s.selected, by, s.queries.len()),
                    Focus::Results => {
                        let n = s.results.as_ref().map_or(0, |r| r.hits.len());
                        let next = s.hit as isize + grid_by;
                        if (0..n as isize).contains(&next) {
                            s.hit = next as usize;
                        } else if by.abs() > 1 {
                            s.hit = moved(s.hit, grid_by, n);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn grid(&mut self, by: isize) {
        if self.tab == Tab::Search && self.search.focus == Focus::Results && !self.search.detail {
            let n = self.search.results.as_ref().map_or(0, |r| r.hits.len());
            self.search.hit = moved(self.search.hit, by, n);
        }
    }

    fn enter(&mut self, out: &mut Vec<Command>) {
        if self.tab != Tab::Search {
            return;
        }
        let s = &mut self.search;
        if let Some(text) = s.input.take() {
            let text = text.trim().to_string();
            if text.is_empty() {
                return;
            }
            let path = expand_home(&text);
            let item = s
                .queries
                .iter()
                .find(|q| q.path == path)
                .map(|q| q.item_id.clone());
            s.pending = Some(path.clone());
            s.error = None;
            out.push(Command::Search { path, item });
            return;
        }
        match s.focus {
            Focus::Queries => {
                if let Some(q) = s.queries.get(s.selected) {
                    s.pending = Some(q.path.clone());
                    s.error = None;
                    out.push(Command::Search {
                        path: q.path.clone(),
                        item: Some(q.item_id.clone()),
                    });
                }
            }
            Focus::Results => {
                if s.results.as_ref().is_some_and(|r| !r.hits.is_empty()) {
                    s.detail = !s.detail;
                }
            }
        }
    }

    fn worker(&mut self, event: WorkerEvent, out: &mut Vec<Command>) {
        match event {
            WorkerEvent::Train(events) => {
                for e in &events {
                    self.train.apply(e);
                    if let TrainEvent::Done { reason, .. } = e
                        && self.started_here
                    {
                        self.started_here = false;
                        if self.opts.auto_index && *reason != StopReason::Interrupted {
                            self.build_index(out);
                        }
                    }
                    if matches!(e, TrainEvent::Failed { .. }) {
                        self.started_here = false;
                    }
                }
                if let Some(Outcome::Failed { message, .. }) = &self.train.outcome
                    && events.iter().any(TrainEvent::is_terminal)
                {
                    self.status = Some(format!("training failed: {message}"));
                }
            }
            WorkerEvent::MetricsError(e) => self.metrics_error = Some(e),
            WorkerEvent::Trainer { pid, control } => {
                if pid.is_some() {
                    self.trainer.starting = false;
                } else if self.trainer.pid.is_some() {
                    self.trainer.ours = false;
                }
                self.trainer.pid = pid;
                self.trainer.control = if pid.is_some() {
                    control
                } else {
                    ControlRequest::Run
                };
            }
            WorkerEvent::Spawned(Ok(pid)) => {
                self.trainer.pid = Some(pid);
                self.trainer.starting = false;
                self.say(format!(
                    "training started (pid {pid}); its log: RUN/vitrine.log"
                ));
            }
            WorkerEvent::Spawned(Err(e)) => {
                self.trainer.starting = false;
                self.trainer.ours = false;
                self.started_here = false;
                self.say(format!("cannot start training: {e}"));
            }
            WorkerEvent::Dataset(result) => match *result {
                Ok(info) => self.dataset_ready(info),
                Err(e) => self.dataset = Loadable::Failed(e),
            },
            WorkerEvent::Scores {
                weights,
                scores,
                done,
                total,
            } => {
                for (i, s) in scores {
                    if let Some(slot) = self.triplets.scores.get_mut(i) {
                        *slot = Some(s);
                    }
                }
                self.triplets.status = if done >= total {
                    ScoreStatus::Done { weights }
                } else {
                    ScoreStatus::Running {
                        weights,
                        done,
                        total,
                    }
                };
                if self.triplets.hardest {
                    self.triplets.rebuild_view();
                }
            }
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
                self.index = status;
            }
            WorkerEvent::Search(Ok(results)) => {
                let s = &mut self.search;
                s.pending = None;
                s.error = None;
                s.hit = 0;
                s.detail = false;
                s.focus = if results.hits.is_empty() {
                    Focus::Queries
                } else {
                    Focus::Results
                };
                s.results = Some(results);
            }
            WorkerEvent::Search(Err(e)) => {
                self.search.pending = None;
                self.search.error = Some(e);
            }
            WorkerEvent::Thumb(key, result) => {
                if self.thumbs.contains_key(&key) {
                    let slot = match result {
                        Ok(t) => ThumbSlot::Ready(t),
                        Err(e) => {
                            self.unreadable += 1;
                            ThumbSlot::Failed(e)
                        }
                    };
                    self.thumbs.insert(key, slot);
                }
            }
            WorkerEvent::Status(msg) => self.say(msg),
        }
    }

    fn dataset_ready(&mut self, info: DatasetInfo) {
        let mut cats: Vec<String> = info
            .triplets
            .iter()
            .map(|t| t.anchor.category.clone())
            .collect();
        cats.sort();
        cats.dedup();
        self.triplets = TripletsState {
            scores: vec![None; info.triplets.len()],
            rows: info.triplets.clone(),
            categories: cats,
            ..TripletsState::default()
        };
        self.triplets.rebuild_view();
        self.search.queries.clone_from(&info.queries);
        self.search.selected = 0;
        self.dataset = Loadable::Ready(info);
    }

    /// Work that follows from the state: score the triplets under the newest
    /// checkpoint while the Triplets tab is open.
    fn housekeeping(&mut self, out: &mut Vec<Command>) {
        let t = &self.triplets;
        if self.tab == Tab::Triplets
            && !t.rows.is_empty()
            && !matches!(t.status, ScoreStatus::Running { .. })
            && t.scored_for != Some(self.train.latest_checkpoint())
        {
            self.triplets.scored_for = Some(self.train.latest_checkpoint());
            self.triplets.status = ScoreStatus::Running {
                weights: "…".into(),
                done: 0,
                total: self.triplets.rows.len(),
            };
            out.push(Command::ScoreTriplets);
        }
    }
}

/// `i + by` clamped to `0..n`.
fn moved(i: usize, by: isize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (i as isize).saturating_add(by).clamp(0, n as isize - 1) as usize
}

fn expand_home(text: &str) -> PathBuf {
    if let Some(rest) = text.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    PathBuf::from(text)
}
