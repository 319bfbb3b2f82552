//! The terminal side: raw mode and the alternate screen (restored on quit, error and
//! panic), the event loop that feeds [`App::update`] and redraws only when something
//! changed, at most `ui.fps` times a second (a key press is drawn at once), and the
//! key-to-frame latency it measures and logs.
//!
//! The loop is one task on a current-thread tokio runtime, a `select!` over three
//! sources: the terminal's input (crossterm's `EventStream`), the workers' events
//! (the unbounded channel behind [`Outbox`]) and the redraw tick. Everything slow
//! (training, embedding, index builds, scoring, decoding) runs on the workers' own
//! threads and never on this one.

use std::io::{IsTerminal, Stdout};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};
use ratatui_image::picker::Picker;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;

use super::app::{Action, App, AppOptions, WorkerEvent};
use super::executor::Executor;
use super::graphics;
use super::keymap::map_key;
use super::workers::{Outbox, RunWorkers, Shown, ThumbWorker};
use crate::config::Config;
use crate::run::folder::{ControlRequest, RunDir};
use crate::theme::Theme;

/// Shortest gap between two frames, even for key presses.
const MIN_FRAME_GAP: Duration = Duration::from_millis(8);
/// How often trainers started here are reaped when nothing else wakes the loop.
const REAP_EVERY: Duration = Duration::from_millis(500);
/// Worker events taken in one turn of the loop (a flood cannot starve drawing).
const DRAIN: usize = 512;

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
    /// The Runs tab's folder [default: the run's parent].
    pub runs: Option<PathBuf>,
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
    // Asked once, before the event loop reads stdin.
    let graphics::Graphics {
        picker,
        label: images_label,
    } = graphics::detect(launch.config.ui.images);
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

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    launch: &Launch,
    picker: Option<Picker>,
    images_label: String,
) -> anyhow::Result<()> {
    // Current-thread: the loop is the only task and it draws synchronously, while all
    // slow work has threads of its own; a multi-thread runtime would only add idle
    // threads competing with training for the cores.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    runtime.block_on(run_loop(terminal, launch, picker, images_label))
}

/// What the loop keeps between turns besides `App`.
struct Frames {
    /// Something changed since the last frame.
    dirty: bool,
    last_draw: Option<Instant>,
    /// When the oldest key not drawn yet was read.
    pending_key: Option<Instant>,
    latency: Latency,
}

impl Frames {
    /// When a pending key may be drawn: at once, but [`MIN_FRAME_GAP`] after the
    /// previous frame at the soonest.
    fn key_due(&self) -> Option<Instant> {
        self.pending_key?;
        Some(
            self.last_draw
                .map_or_else(Instant::now, |t| t + MIN_FRAME_GAP),
        )
    }

    fn draw(
        &mut self,
        terminal: &mut Terminal<CrosstermBackend<Stdout>>,
        app: &mut App,
        exec: &mut Executor,
        theme: &Theme,
    ) -> anyhow::Result<()> {
        let mut wanted = Vec::new();
        terminal.draw(|f| wanted = super::views::draw(f, app, theme))?;
        let now = Instant::now();
        self.last_draw = Some(now);
        self.dirty = false;
        if let Some(t0) = self.pending_key.take() {
            let ms = now.duration_since(t0).as_secs_f64() * 1e3;
            self.latency.record(ms);
            tracing::debug!("key→frame {ms:.1} ms");
        }
        if !wanted.is_empty() {
            let c = app.update(Action::NeedThumbs(wanted));
            exec.run(app, c);
        }
        Ok(())
    }
}

async fn run_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    launch: &Launch,
    picker: Option<Picker>,
    images_label: String,
) -> anyhow::Result<()> {
    let (out, mut worker_events) = Outbox::channel();
    let mut opts = AppOptions::new(launch.run.clone(), launch.data.clone());
    if let Some(runs) = &launch.runs {
        opts.runs.clone_from(runs);
    }
    opts.read_only = launch.read_only;
    opts.auto_index = launch.auto_index;
    opts.images = picker.is_some();
    opts.images_label = images_label;
    opts.plot_marker = launch.config.ui.plot_marker;
    let mut app = App::new(opts);
    let shown = Shown {
        run: launch.run.clone(),
        data: launch.data.clone(),
        config: launch.config.clone(),
    };
    let mut exec = Executor::new(
        launch.config.clone(),
        out.clone(),
        RunWorkers::spawn(shown, &out, app.generation),
        picker.map(|p| ThumbWorker::spawn(p, 2, out.clone())),
    );
    drop(out);
    if launch.start_training && !launch.read_only {
        let c = app.update(Action::StartTraining);
        exec.run(&mut app, c);
    }
    if launch.build_index && !launch.read_only {
        let c = app.update(Action::BuildIndex);
        exec.run(&mut app, c);
    }
    let frame_gap = Duration::from_secs_f64(1.0 / f64::from(launch.config.ui.fps.clamp(1, 60)));
    let mut input = EventStream::new();
    let mut input_open = true;
    // The frame rate cap: a change that is not a key is drawn on this tick, which
    // restarts at every frame so that frames stay `frame_gap` apart.
    let mut redraw = tokio::time::interval(frame_gap);
    redraw.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reap = tokio::time::interval(REAP_EVERY);
    reap.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut frames = Frames {
        dirty: true,
        last_draw: None,
        pending_key: None,
        latency: Latency::default(),
    };
    loop {
        let key_due = frames.key_due();
        if frames.dirty
            && (frames.last_draw.is_none() || key_due.is_some_and(|t| Instant::now() >= t))
        {
            frames.draw(terminal, &mut app, &mut exec, &launch.theme)?;
            redraw.reset();
        }
        let key_wait = tokio::time::Instant::from_std(key_due.unwrap_or_else(Instant::now));
        tokio::select! {
            event = input.next(), if input_open => match event {
                Some(Ok(Event::Key(key))) => {
                    let at = Instant::now();
                    if let Some(action) = map_key(&app, key) {
                        let c = app.update(action);
                        exec.run(&mut app, c);
                        frames.pending_key.get_or_insert(at);
                        frames.dirty = true;
                    }
                }
                Some(Ok(Event::Resize(..))) => {
                    app.update(Action::Resize);
                    frames.dirty = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::error!("terminal input: {e}");
                    input_open = false;
                }
                None => input_open = false,
            },
            event = worker_events.recv() => {
                let Some(first) = event else { break };
                for e in std::iter::once(first).chain(drain(&mut worker_events)) {
                    let c = app.update(Action::Worker(e));
                    exec.run(&mut app, c);
                }
                frames.dirty = true;
            }
            _ = redraw.tick(), if frames.dirty => {
                frames.draw(terminal, &mut app, &mut exec, &launch.theme)?;
            }
            () = tokio::time::sleep_until(key_wait), if frames.dirty && key_due.is_some() => {}
            _ = reap.tick() => {}
        }
        exec.reap();
        if app.should_quit {
            break;
        }
    }
    // The follower stops; the other workers end with the channel.
    drop(exec);
    if app.stop_on_quit {
        let run = RunDir::new(&app.opts.run);
        match run.send_control(ControlRequest::Stop) {
            Ok(()) => tracing::info!("asked the trainer of {} to stop", app.opts.run.display()),
            Err(e) => tracing::error!("cannot ask the trainer to stop: {e}"),
        }
    } else if let Some(pid) = app.trainer.pid {
        tracing::info!("leaving the trainer (pid {pid}) running");
    }
    if let Some((p50, p95, max)) = frames.latency.summary() {
        tracing::info!(
            "key→frame latency over {} keys: p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms",
            frames.latency.samples.len()
        );
    }
    Ok(())
}

/// Worker events already waiting, at most [`DRAIN`].
fn drain(rx: &mut UnboundedReceiver<WorkerEvent>) -> impl Iterator<Item = WorkerEvent> + '_ {
    std::iter::from_fn(|| rx.try_recv().ok()).take(DRAIN)
}
