//! The dashboard with real processes: training started from it survives it and can
//! be re-attached; a run opened from the Runs tab takes over the workers; the real
//! binary in tmux switches tabs, searches, compares two runs in the Runs tab, opens
//! one, and restores the terminal on quit.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use vitrine::config::Config;
use vitrine::run::folder::{ControlRequest, RunDir};
use vitrine::train::events::{RunStarted, StopReason, TrainEvent};
use vitrine::train::metrics_log::read_all;
use vitrine::tui::app::{Action, App, AppOptions, Command as AppCommand, Tab, WorkerEvent};
use vitrine::tui::tabs::dataset::Loadable;
use vitrine::tui::tabs::search::IndexStatus;
use vitrine::tui::workers::runs::Lister;
use vitrine::tui::workers::{Outbox, RunWorkers, Shown, spawn_follower, spawn_trainer};

const BIN: &str = env!("CARGO_BIN_EXE_vitrine");
const METRICS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tui/metrics.jsonl"
);

/// A dashboard's state fed by a follower of the run, as the runtime does it.
struct Attached {
    app: App,
    rx: UnboundedReceiver<WorkerEvent>,
    stop: Arc<AtomicBool>,
}

impl Attached {
    fn new(run: &Path, data: &Path) -> Self {
        let (out, rx) = Outbox::channel();
        let stop = Arc::new(AtomicBool::new(false));
        spawn_follower(run, out, Arc::clone(&stop));
        let opts = AppOptions::new(run.to_path_buf(), data.to_path_buf());
        Self {
            app: App::new(opts),
            rx,
            stop,
        }
    }

    /// Feeds worker events until `done(app)` or the timeout.
    fn pump_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&App) -> bool) {
        let end = Instant::now() + timeout;
        while !done(&self.app) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            match self.rx.try_recv() {
                Ok(e) => {
                    self.app.update(Action::Worker(e));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn detach(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the trainer did not exit in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn training_outlives_the_dashboard_and_can_be_reattached() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let mut cfg = common::tiny_train_config();
    cfg.train.epochs = 50;
    let mut child = spawn_trainer(Path::new(BIN), &cfg, &data, &run).expect("spawn trainer");
    let pid = child.id();

    // First dashboard: sees the trainer and its steps.
    let mut first = Attached::new(&run, &data);
    first.pump_until("the first step", Duration::from_secs(120), |a| {
        a.trainer.pid == Some(pid) && a.train.last.is_some()
    });
    let seen = first.app.train.last.map_or(0, |s| s.step);
    first.detach();

    // Quitting the dashboard leaves the trainer running and holding the run.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "trainer still runs"
    );
    let dir = RunDir::new(&run);
    assert_eq!(dir.locked_by(), Some(pid));

    // Second dashboard: replays from the start, then follows new steps.
    let mut second = Attached::new(&run, &data);
    second.pump_until("newer steps", Duration::from_secs(120), |a| {
        a.trainer.pid == Some(pid) && a.train.last.is_some_and(|s| s.step > seen)
    });
    assert!(second.app.train.info.is_some(), "replayed `started`");
    assert!(second.app.train.baseline.is_some(), "replayed `baseline`");
    assert!(
        second.app.train.loss.len() > seen,
        "replayed the earlier steps"
    );

    // Stop through the control file: checkpoint, exit 0, lock released.
    dir.send_control(ControlRequest::Stop).expect("control");
    let status = wait_exit(&mut child, Duration::from_secs(120));
    assert!(status.success(), "{status}");
    second.pump_until("the end", Duration::from_secs(10), |a| {
        a.trainer.pid.is_none() && a.train.outcome.is_some()
    });
    second.detach();
    let events = read_all(&dir.metrics()).expect("metrics");
    assert!(matches!(
        events.last(),
        Some(TrainEvent::Done {
            reason: StopReason::Interrupted,
            ..
        })
    ));
    assert!(
        dir.checkpoint(vitrine::run::folder::CheckpointKind::Last)
            .is_file()
    );
    assert_eq!(dir.locked_by(), None);
    let log = std::fs::read_to_string(dir.log()).expect("the trainer's log");
    assert!(log.contains("stopped"), "{log}");
}

/// Feeds the app the workers' events until `done(app)` or the timeout.
fn pump(
    app: &mut App,
    rx: &mut UnboundedReceiver<WorkerEvent>,
    what: &str,
    done: impl Fn(&App) -> bool,
) {
    let end = Instant::now() + Duration::from_secs(30);
    while !done(app) {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        match rx.try_recv() {
            Ok(e) => {
                app.update(Action::Worker(e));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Appends `events` to `run`'s metrics.jsonl, as a trainer does.
fn append_events(run: &Path, events: &[TrainEvent]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(RunDir::new(run).metrics())
        .expect("metrics.jsonl");
    for e in events {
        writeln!(f, "{}", serde_json::to_string(e).expect("json")).expect("write");
    }
}

fn step_event(step: usize) -> TrainEvent {
    TrainEvent::Step {
        step,
        epoch: 9,
        loss: 0.25,
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

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Enter on the Runs tab with the real workers, as the runtime wires them: the
/// follower, the dataset reader and the index status move to the opened run; events
/// of the old run already on their way, and lines it writes afterwards, never reach
/// the new state; nothing in the opened run is started, locked or written.
#[test]
fn opening_a_run_moves_the_workers_to_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let runs = tmp.path().join("runs");
    let (a, b) = (runs.join("a"), runs.join("b"));
    let recorded = read_all(Path::new(METRICS)).expect("fixture");
    let a_events: Vec<TrainEvent> = recorded.clone();
    // b: still training (the first 12 steps), with settings naming a dataset that is
    // not there.
    let b_events: Vec<TrainEvent> = recorded
        .into_iter()
        .take_while(|e| !matches!(e, TrainEvent::Step { step, .. } if *step > 12))
        .map(|mut e| {
            if let TrainEvent::Started(RunStarted { run, .. }) = &mut e {
                *run = "b".into();
            }
            e
        })
        .collect();
    for (run, events) in [(&a, &a_events), (&b, &b_events)] {
        std::fs::create_dir_all(run).expect("run dir");
        append_events(run, events);
    }
    let mut b_config = Config::default();
    b_config.data.root = tmp.path().join("missing-data");
    b_config.train.lr = 0.25;
    std::fs::write(
        RunDir::new(&b).config(),
        toml::to_string(&b_config).expect("toml"),
    )
    .expect("config.toml");
    let b_files = names_in(&b);
    let b_len = std::fs::metadata(RunDir::new(&b).metrics())
        .expect("metrics")
        .len();

    let (out, mut rx) = Outbox::channel();
    let data_a = tmp.path().join("data-a");
    let mut app = App::new(AppOptions::new(a.clone(), data_a.clone()));
    let shown = Shown {
        run: a.clone(),
        data: data_a,
        config: Config::default(),
    };
    let workers = RunWorkers::spawn(shown, &out, app.generation);
    pump(&mut app, &mut rx, "run a's history", |app| {
        app.train.events == a_events.len()
            && matches!(&app.dataset, Loadable::Failed(e) if e.contains("data-a"))
            && app.index == IndexStatus::Missing
    });

    // a writes on; its follower reads the lines before the switch.
    append_events(&a, &[step_event(1000), step_event(1001)]);
    std::thread::sleep(Duration::from_millis(1500));

    app.update(Action::GoTab(Tab::Runs));
    app.update(Action::Worker(WorkerEvent::Runs(
        Lister::default().list(&runs),
    )));
    app.update(Action::Down);
    let commands = app.update(Action::Enter);
    assert_eq!(
        commands,
        [AppCommand::OpenRun {
            run: b.clone(),
            generation: 1
        }]
    );
    // What the runtime does with the command.
    let (new_workers, opened) = RunWorkers::open(&b, &Config::default(), &app.opts.data, &out, 1);
    drop(workers);
    app.update(Action::Worker(opened));
    assert_eq!(app.opts.data, tmp.path().join("missing-data"));
    assert_eq!(new_workers.shown.config.train.lr, 0.25, "b's own settings");
    pump(&mut app, &mut rx, "run b's history", |app| {
        app.train.events == b_events.len()
            && matches!(&app.dataset, Loadable::Failed(e) if e.contains("missing-data"))
            && app.index == IndexStatus::Missing
    });
    // a keeps writing; nothing of it arrives.
    append_events(&a, &[step_event(1002)]);
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(e) = rx.try_recv() {
        app.update(Action::Worker(e));
    }
    assert_eq!(app.train.events, b_events.len());
    assert_eq!(app.train.last.map(|s| s.step), Some(12));
    assert_eq!(app.train.info.as_ref().map(|i| i.run.as_str()), Some("b"));
    // Opening is read-only.
    assert_eq!(names_in(&b), b_files, "nothing written in the run");
    assert_eq!(RunDir::new(&b).locked_by(), None);
    assert_eq!(
        std::fs::metadata(RunDir::new(&b).metrics())
            .expect("metrics")
            .len(),
        b_len
    );
    drop(new_workers);
}

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "dash"]).stdout)
            .into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "dash"];
        args.extend_from_slice(keys);
        self.cmd(&args);
    }

    fn wait_for(&self, text: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < end,
                "`{text}` never appeared; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn vitrine(dir: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run vitrine");
    assert!(
        out.status.success(),
        "vitrine {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_in_tmux_searches_and_restores_the_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("skipping the tmux end-to-end test: tmux is not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(
        dir.join("tiny.toml"),
        "[model]\nimage_size = 32\ndropout = 0.0\n[train]\nbatch = 8\ndevice = \"cpu\"\n\
         checkpoint_every = 0\n[ui]\nimages = \"halfblocks\"\n",
    )
    .expect("config");
    vitrine(
        dir,
        &["synth", "--out", "ds", "--items", "80", "--size", "64"],
    );
    vitrine(
        dir,
        &[
            "--config",
            "tiny.toml",
            "train",
            "--data",
            "ds",
            "--run",
            "run",
            "--max-steps",
            "2",
        ],
    );
    // A second run, with another learning rate, for the Runs tab.
    vitrine(
        dir,
        &[
            "--config",
            "tiny.toml",
            "train",
            "--data",
            "ds",
            "--run",
            "run2",
            "--max-steps",
            "2",
            "--lr",
            "0.0003",
        ],
    );
    vitrine(
        dir,
        &[
            "--config",
            "tiny.toml",
            "index",
            "--run",
            "run",
            "--data",
            "ds",
            "--checkpoint",
            "last",
        ],
    );
    let tmux = Tmux {
        socket: format!("vitrine-test-{}", std::process::id()),
    };
    let script = format!(
        "cd {} && {BIN} --config tiny.toml dashboard --data ds --run run --runs .; echo EXIT=$?; \
         stty -a | grep -q ' icanon' && echo COOKED; sleep 60",
        dir.display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "dash",
        "-x",
        "100",
        "-y",
        "30",
        &script,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wait = Duration::from_secs(30);
    let screen = tmux.wait_for("max steps reached", wait);
    for title in ["Train", "Dataset", "Triplets", "Search"] {
        assert!(screen.contains(title), "{screen}");
    }
    tmux.keys(&["2"]);
    tmux.wait_for("Splits", wait);
    tmux.keys(&["3"]);
    tmux.wait_for("anchor · consumer", wait);
    tmux.wait_for("scored with", wait);
    tmux.keys(&["4"]);
    tmux.wait_for("Test queries", wait);
    tmux.wait_for("index: ", wait);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("#20 ", wait);
    assert!(screen.contains("Top 20"), "{screen}");
    for k in 1..=20 {
        assert!(
            screen.contains(&format!("#{k} ")),
            "result {k} missing:\n{screen}"
        );
    }
    // The failures view ranks every test query in the background, worst first.
    tmux.keys(&["f"]);
    let screen = tmux.wait_for("Failures, worst first", wait);
    assert!(screen.contains("queries: top-1"), "{screen}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("Test queries", wait);
    // Runs: both runs listed, both marked, their config diff, then run2 opened.
    tmux.keys(&["5"]);
    let screen = tmux.wait_for("run2", wait);
    assert!(screen.contains("Runs in ."), "{screen}");
    let row = |name: &str| {
        screen
            .lines()
            .any(|l| l.contains(&format!(" {name} ")) && l.contains("finished"))
    };
    assert!(row("run") && row("run2"), "two finished runs:\n{screen}");
    tmux.keys(&["Space", "j", "Space", "d"]);
    let screen = tmux.wait_for("Config diff · run vs run2", wait);
    let screen = if screen.contains("train.lr") {
        screen
    } else {
        tmux.wait_for("train.lr", wait)
    };
    assert!(screen.contains("0.0003"), "{screen}");
    assert!(
        !screen.contains("train.max_steps"),
        "only what differs:\n{screen}"
    );
    tmux.keys(&["Escape"]);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("opened run run2", wait);
    assert!(
        screen.contains("run run2"),
        "the header names the run:\n{screen}"
    );
    assert!(screen.contains("Progress"), "the Train tab:\n{screen}");
    tmux.keys(&["?"]);
    tmux.wait_for("Keys (Esc or ? closes)", wait);
    tmux.keys(&["Escape", "q"]);
    let screen = tmux.wait_for("EXIT=0", wait);
    assert!(
        !screen.contains("Test queries"),
        "the dashboard is gone:\n{screen}"
    );
    tmux.wait_for("COOKED", wait);
    let alt = tmux.cmd(&[
        "display-message",
        "-p",
        "-t",
        "dash",
        "#{alternate_on} #{cursor_flag}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&alt.stdout).trim(),
        "0 1",
        "screen and cursor restored"
    );
}
