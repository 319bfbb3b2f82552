//! The terminal side: raw mode and the alternate screen (restored on quit, error and
//! panic), the input thread, the event loop that feeds [`App::update`] and redraws
//! only when something changed, at most `ui.fps` times a second (a key press is drawn
//! at once), and the key-to-frame latency it measures and logs.

use std::io::{IsTerminal, Stdout};
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyEvent};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};
use ratatui_image::picker::{Picker, ProtocolType};

use super::app::{Action, App, AppOptions, Command};
use super::keymap::map_key;
use super::settings::ImageMode;
use super::workers::{self, IndexWorker, Outbox, ThumbWorker};
use crate::config::Config;
use crate::theme::Theme;
use crate::train::run_dir::{ControlRequest, RunDir};

/// Shortest gap between two frames, even for key presses.
const MIN_FRAME_GAP: Duration = Duration::from_millis(8);

/// What reaches the event loop.
#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent, Instant),
    Resize,
    Worker(super::app::WorkerEvent),
}

/// How to open the dashboard.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Settings for a training started from the dashboard (and `[ui]`).
    pub config: Config,
    pub data: PathBuf,
    pub run: PathBuf,
    pub theme: Theme,
    pub read_only: bool,
    /// Start (or resume) training right away (`demo`).
    pub start_training: bool,
    /// Build the index right away (`demo` on a finished run without one).
    pub build_index: bool,
    /// Build the index when a training started here ends (`demo`).
    pub auto_index: bool,
}

/// Key-to-frame latencies, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    pub samples: Vec<f64>,
}

impl Latency {
    pub fn record(&mut self, ms: f64) {
        self.samples.push(ms);
    }

    /// `(p50, p95, max)`.
    pub fn summary(&self) -> Option<(f64, f64, f64)> {
        if self.samples.is_empty() {
            return None;
        }
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.95), s[s.len() - 1]))
    }
}

/// Restores the terminal when dropped (normal return, `?` error, unwinding panic).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Chooses how thumbnails are drawn: asked of the terminal once (before the input
/// thread reads stdin), half blocks inside tmux or when it does not answer.
fn pick_images(mode: ImageMode) -> (Option<Picker>, String) {
    let in_tmux = std::env::var_os("TMUX").is_some_and(|v| !v.is_empty());
    let query = || match Picker::from_query_stdio() {
        Ok(p) => p,
        Err(e) => {
            tracing::info!("terminal graphics query failed ({e}); using half blocks");
            Picker::halfblocks()
        }
    };
    let forced = |t: ProtocolType| {
        let mut p = query();
        p.set_protocol_type(t);
        p
    };
    let picker = match mode {
        ImageMode::Off => None,
        ImageMode::Halfblocks => Some(Picker::halfblocks()),
        ImageMode::Auto if in_tmux => Some(Picker::halfblocks()),
        ImageMode::Auto => Some(query()),
        ImageMode::Kitty => Some(forced(ProtocolType::Kitty)),
        ImageMode::Sixel => Some(forced(ProtocolType::Sixel)),
        ImageMode::Iterm2 => Some(forced(ProtocolType::Iterm2)),
    };
    let label = picker.as_ref().map_or_else(
        || "off".to_string(),
        |p| format!("{:?}", p.protocol_type()).to_lowercase(),
    );
    (picker, label)
}

/// Runs the dashboard until the user quits. Nothing is printed to the terminal
/// while it runs; logs go to the log file set up by the caller.
pub fn run(launch: Launch) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the dashboard needs a terminal (stdout is not one); use `vitrine train`, `vitrine watch` in a terminal, or `vitrine demo` headless"
        );
    }
    enable_raw_mode()?;
    let guard = TerminalGuard;
    let previous = std::panic::take_hook();
    let ui_thread = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        // Only a panic of the UI thread ends the dashboard; a worker's is logged (its
        // worker reports the failure) and must not touch the screen the UI still draws.
        if std::thread::current().id() == ui_thread {
            restore_terminal();
            tracing::error!("panic: {info}");
            previous(info);
        } else {
            let name = std::thread::current()
                .name()
                .unwrap_or("worker")
                .to_string();
            tracing::error!("panic in the {name} thread: {info}");
        }
    }));
    execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
    let (picker, images_label) = pick_images(launch.config.ui.images);
    tracing::info!(
        "dashboard on run {} (data {}), thumbnails: {images_label}",
        launch.run.display(),
        launch.data.display()
    );
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    let result = event_loop(&mut terminal, &launch, picker, images_label);
    drop(terminal);
    drop(guard);
    let _ = std::panic::take_hook();
    result
}

fn spawn_input(tx: crossbeam_channel::Sender<Msg>) {
    let spawned = std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            loop {
                let msg = match event::read() {
                    Ok(Event::Key(k)) => Msg::Key(k, Instant::now()),
                    Ok(Event::Resize(..)) => Msg::Resize,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!("terminal input: {e}");
                        return;
                    }
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the input thread: {e}");
    }
}

/// Runs the commands `update` returned.
struct Executor {
    launch: Launch,
    out: Outbox,
    index: IndexWorker,
    thumbs: Option<ThumbWorker>,
    children: Vec<Child>,
}

impl Executor {
    fn run(&mut self, app: &mut App, commands: Vec<Command>) {
        let mut queue = commands;
        while let Some(c) = queue.pop() {
            let more = self.one(app, c);
            queue.extend(more);
        }
    }

    fn one(&mut self, app: &mut App, command: Command) -> Vec<Command> {
        use super::app::WorkerEvent;
        let run = RunDir::new(&self.launch.run);
        match command {
            Command::StartTraining => {
                let exe = std::env::current_exe();
                let spawned = exe.and_then(|exe| {
                    workers::spawn_trainer(
                        &exe,
                        &self.launch.config,
                        &self.launch.data,
                        &self.launch.run,
                    )
                });
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
                self.index.build();
                Vec::new()
            }
            Command::Search { path, item } => {
                self.index.search(path, item);
                Vec::new()
            }
            Command::ScoreTriplets => {
                workers::spawn_scorer(
                    self.launch.run.clone(),
                    self.launch.config.clone(),
                    app.triplets.rows.clone(),
                    self.out.clone(),
                );
                Vec::new()
            }
            Command::LoadThumb(key) => {
                if let Some(t) = &self.thumbs {
                    t.request(key);
                }
                Vec::new()
            }
        }
    }

    /// Reaps trainers started here that have exited (no zombies while we run).
    fn reap(&mut self) {
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

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    launch: &Launch,
    picker: Option<Picker>,
    images_label: String,
) -> anyhow::Result<()> {
    let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
    let out = Outbox(tx.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = AppOptions::new(launch.run.clone(), launch.data.clone());
    opts.read_only = launch.read_only;
    opts.auto_index = launch.auto_index;
    opts.images = picker.is_some();
    opts.images_label = images_label;
    opts.plot_marker = launch.config.ui.plot_marker;
    let mut app = App::new(opts);
    let seed = workers::run_config(&launch.run, &launch.config).train.seed;
    workers::spawn_follower(&launch.run, out.clone(), Arc::clone(&stop));
    workers::spawn_dataset(
        launch.data.clone(),
        launch.config.data.gallery,
        seed,
        out.clone(),
    );
    let mut exec = Executor {
        launch: launch.clone(),
        out: out.clone(),
        index: IndexWorker::spawn(
            launch.run.clone(),
            launch.data.clone(),
            launch.config.clone(),
            out.clone(),
        ),
        thumbs: picker.map(|p| ThumbWorker::spawn(p, 2, out.clone())),
        children: Vec::new(),
    };
    spawn_input(tx);
    if launch.start_training && !launch.read_only {
        let c = app.update(Action::StartTraining);
        exec.run(&mut app, c);
    }
    if launch.build_index && !launch.read_only {
        let c = app.update(Action::BuildIndex);
        exec.run(&mut app, c);
    }
    let frame_gap = Duration::from_secs_f64(1.0 / f64::from(launch.config.ui.fps.clamp(1, 60)));
    let mut latency = Latency::default();
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let mut pending_key: Option<Instant> = None;
    loop {
        if dirty {
            let gap = if pending_key.is_some() {
                MIN_FRAME_GAP
            } else {
                frame_gap
            };
            let due = last_draw.map_or_else(Instant::now, |t| t + gap);
            if Instant::now() >= due {
                let mut wanted = Vec::new();
                terminal.draw(|f| wanted = super::views::draw(f, &app, &launch.theme))?;
                let now = Instant::now();
                last_draw = Some(now);
                dirty = false;
                if let Some(t0) = pending_key.take() {
                    let ms = now.duration_since(t0).as_secs_f64() * 1e3;
                    latency.record(ms);
                    tracing::debug!("key→frame {ms:.1} ms");
                }
                if !wanted.is_empty() {
                    let c = app.update(Action::NeedThumbs(wanted));
                    exec.run(&mut app, c);
                }
            }
        }
        let timeout = if dirty {
            let gap = if pending_key.is_some() {
                MIN_FRAME_GAP
            } else {
                frame_gap
            };
            last_draw.map_or(Duration::ZERO, |t| {
                (t + gap).saturating_duration_since(Instant::now())
            })
        } else {
            Duration::from_millis(500)
        };
        let first = match rx.recv_timeout(timeout) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        for msg in first.into_iter().chain(drain(&rx)) {
            match msg {
                Msg::Key(key, at) => {
                    if let Some(action) = map_key(&app, key) {
                        let c = app.update(action);
                        exec.run(&mut app, c);
                        pending_key.get_or_insert(at);
                        dirty = true;
                    }
                }
                Msg::Resize => {
                    app.update(Action::Resize);
                    dirty = true;
                }
                Msg::Worker(e) => {
                    let c = app.update(Action::Worker(e));
                    exec.run(&mut app, c);
                    dirty = true;
                }
            }
        }
        exec.reap();
        if app.should_quit {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if app.stop_on_quit {
        let run = RunDir::new(&launch.run);
        match run.send_control(ControlRequest::Stop) {
            Ok(()) => tracing::info!("asked the trainer of {} to stop", launch.run.display()),
            Err(e) => tracing::error!("cannot ask the trainer to stop: {e}"),
        }
    } else if let Some(pid) = app.trainer.pid {
        tracing::info!("leaving the trainer (pid {pid}) running");
    }
    if let Some((p50, p95, max)) = latency.summary() {
        tracing::info!(
            "key→frame latency over {} keys: p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms",
            latency.samples.len()
        );
    }
    Ok(())
}

/// Messages already waiting (bounded, so a flood cannot starve drawing).
fn drain(rx: &Receiver<Msg>) -> impl Iterator<Item = Msg> + '_ {
    rx.try_iter().take(512)
}
