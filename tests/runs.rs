//! `vitrine runs`: statuses read from the lock, control file and last event; the
//! recipe and results from the run's events. The dashboard's Runs tab over two runs
//! trained by the real binary: rows, overlaid curves, config diff, a live run.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use vitrine::run::folder::{ControlRequest, RunDir};
use vitrine::train::events::{TrainEvent, ValMetrics};
use vitrine::train::job::{Control, TrainJob};
use vitrine::train::metrics_log::read_all;
use vitrine::train::runs::{RunStatus, RunSummary, list, summarize};
use vitrine::train::trainer::train;
use vitrine::tui::app::{Action, App, AppOptions, Command as AppCommand, Tab, WorkerEvent};
use vitrine::tui::workers::{Outbox, RunsWorker};

#[test]
fn runs_are_listed_with_status_recipe_and_results() {
    let data = common::synth_dataset(40, 32);
    let tmp = tempfile::tempdir().expect("tempdir");
    let runs = tmp.path().join("runs");
    let mut config = common::tiny_train_config();
    config.train.max_steps = 3;
    config.data.workers = 1;
    let job = TrainJob {
        config: config.clone(),
        data: data.clone(),
        run: runs.join("a"),
        resume: false,
    };
    let outcome = train(&job, &Control::new(), &mut |_| {}).expect("train");
    // A run whose trainer died: events but no last one.
    let dead = runs.join("b");
    std::fs::create_dir_all(dead.join("checkpoints")).expect("mkdir");
    let a_metrics = std::fs::read_to_string(RunDir::new(&job.run).metrics()).expect("metrics");
    let first_line = a_metrics.lines().next().expect("started");
    std::fs::write(RunDir::new(&dead).metrics(), format!("{first_line}\n")).expect("write");
    // Not a run: ignored.
    std::fs::create_dir_all(runs.join("notes")).expect("mkdir");

    let a = summarize(&job.run);
    assert_eq!(a.status, RunStatus::Finished);
    assert_eq!(a.step, 3);
    assert_eq!(a.backbone, "resnet18");
    assert_eq!(a.image_size, 32);
    assert_eq!(a.loss, config.loss.kind.to_string());
    assert_eq!(a.best_val_top20, outcome.best_val_top20);
    assert!(a.seconds > 0.0 && a.updated.is_some());
    assert_eq!(summarize(&dead).status, RunStatus::Interrupted);

    // A live trainer (its lock held), then paused through the control file.
    let lock = RunDir::new(&dead).lock().expect("lock");
    assert_eq!(summarize(&dead).status, RunStatus::Training);
    RunDir::new(&dead)
        .send_control(ControlRequest::Pause)
        .expect("pause");
    assert_eq!(summarize(&dead).status, RunStatus::Paused);
    drop(lock);

    let names: Vec<String> = list(&runs)
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["runs", "--json", "--dir"])
        .arg(&runs)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["status"], "finished");
    assert_eq!(v[1]["status"], "interrupted");
    let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["runs", "--dir"])
        .arg(&runs)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("run ") && text.contains("finished") && text.contains("3/"),
        "{text}"
    );
}

/// Two runs trained by the real binary on a tiny synthetic set, the second with
/// another learning rate (trained once per test binary; the tests that change a run
/// work on a copy).
struct TwoRuns {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    runs: PathBuf,
}

const LR_A: f64 = 1e-3;
const LR_B: f64 = 3e-4;

fn two_runs() -> &'static TwoRuns {
    static RUNS: OnceLock<TwoRuns> = OnceLock::new();
    RUNS.get_or_init(|| {
        let data = common::synth_dataset(40, 32);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = common::tiny_train_config();
        config.train.epochs = 2;
        config.data.workers = 1;
        let settings = tmp.path().join("tiny.toml");
        std::fs::write(&settings, toml::to_string(&config).expect("toml")).expect("settings");
        let runs = tmp.path().join("runs");
        for (name, lr) in [("a", LR_A), ("b", LR_B)] {
            let out = Command::new(env!("CARGO_BIN_EXE_vitrine"))
                .arg("--config")
                .arg(&settings)
                .args(["train", "--lr", &lr.to_string(), "--data"])
                .arg(&data)
                .arg("--run")
                .arg(runs.join(name))
                .output()
                .expect("vitrine train");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TwoRuns {
            _tmp: tmp,
            data,
            runs,
        }
    })
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

/// What the Runs tab must show for a run, read straight from its events.
struct Expected {
    last_step: usize,
    losses: usize,
    epochs: usize,
    /// Points of the val curve: the baseline and each validated epoch.
    val_points: usize,
    best_top1: Option<f64>,
    best_top20: Option<f64>,
}

fn expected(run: &Path) -> Expected {
    let events = read_all(&RunDir::new(run).metrics()).expect("metrics");
    let mut e = Expected {
        last_step: 0,
        losses: 0,
        epochs: 0,
        val_points: 0,
        best_top1: None,
        best_top20: None,
    };
    for ev in &events {
        match ev {
            TrainEvent::Step { step, loss, .. } => {
                e.last_step = *step;
                e.losses += usize::from(loss.is_finite());
            }
            // The untrained model is the curve's first point.
            TrainEvent::Baseline(_) => e.val_points += 1,
            TrainEvent::Epoch {
                val:
                    ValMetrics {
                        val_top1,
                        val_top20,
                        ..
                    },
                ..
            } => {
                e.epochs += 1;
                e.val_points += usize::from(val_top20.is_finite());
                if e.best_top20.is_none_or(|b| *val_top20 > b) {
                    e.best_top1 = Some(*val_top1);
                    e.best_top20 = Some(*val_top20);
                }
            }
            _ => {}
        }
    }
    e
}

/// The dashboard's Runs tab over two recorded runs, driven as the runtime drives it
/// (the runs worker's events into `App::update`): both rows summarised, both curves
/// overlaid once marked, and `d` lists exactly the setting that differs.
#[test]
fn two_recorded_runs_compare_in_the_runs_tab() {
    let two = two_runs();
    let (a, b) = (two.runs.join("a"), two.runs.join("b"));
    let (out, mut rx) = Outbox::channel();
    let mut app = App::new(AppOptions::new(a.clone(), two.data.clone()));
    assert_eq!(
        app.update(Action::GoTab(Tab::Runs)),
        [AppCommand::WatchRuns(two.runs.clone())]
    );
    let worker = RunsWorker::spawn(two.runs.clone(), out);
    pump(&mut app, &mut rx, "the listing", |app| app.runs.loaded);
    assert_eq!(app.runs.error, None);
    let names: Vec<&str> = app
        .runs
        .runs
        .iter()
        .map(|r| r.summary.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    for (row, run) in app.runs.runs.iter().zip([&a, &b]) {
        let want = expected(run);
        let s = &row.summary;
        assert_eq!(s.status, RunStatus::Finished, "{}", s.name);
        assert_eq!((s.backbone.as_str(), s.image_size), ("resnet18", 32));
        assert_eq!(s.step, want.last_step);
        assert_eq!(s.total_steps, want.last_step, "all epochs ran");
        assert!(want.epochs == 2 && want.best_top20.is_some());
        assert_eq!(s.best_val_top1, want.best_top1);
        assert_eq!(s.best_val_top20, want.best_top20);
        assert!(s.seconds > 0.0 && s.updated.is_some());
    }

    // Marking both overlays two curves in each chart, one per run, every point in.
    app.update(Action::ToggleMark);
    app.update(Action::Down);
    app.update(Action::ToggleMark);
    let charted = app.runs.charted();
    assert_eq!(charted.len(), 2);
    for ((mark, entry), run) in charted.iter().zip([&a, &b]) {
        let want = expected(run);
        assert_eq!(entry.summary.path, *run);
        assert_eq!(app.runs.mark_of(run), Some(*mark));
        assert_eq!(entry.curves.loss.len(), want.losses);
        assert_eq!(
            entry.curves.loss.last().map(|p| p.0),
            Some(want.last_step as f64)
        );
        assert_eq!(entry.curves.val_top20.len(), want.val_points);
        assert_eq!(
            entry.curves.val_top20.iter().map(|p| p.1).reduce(f64::max),
            want.best_top20
        );
    }
    // The two curves differ (another learning rate learns otherwise).
    assert_ne!(charted[0].1.curves.loss, charted[1].1.curves.loss);

    // d: the config diff, from the worker, names only the learning rate.
    let commands = app.update(Action::Diff);
    assert_eq!(
        commands,
        [AppCommand::DiffRuns {
            a: a.clone(),
            b: b.clone()
        }]
    );
    worker.diff(a.clone(), b.clone());
    pump(&mut app, &mut rx, "the config diff", |app| {
        app.runs.diff.as_ref().is_some_and(|d| d.rows.is_some())
    });
    let diff = app.runs.diff.as_ref().expect("diff");
    let rows = diff
        .rows
        .as_ref()
        .expect("answered")
        .as_ref()
        .expect("diff rows");
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["train.lr"]);
    let lr = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<f64>().ok());
    assert_eq!((lr(&rows[0].a), lr(&rows[0].b)), (Some(LR_A), Some(LR_B)));
}

/// A run still training (its lock held) moves in the Runs tab as lines are appended
/// to its metrics after the first read.
#[test]
fn a_live_run_row_follows_its_metrics() {
    let two = two_runs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let runs = tmp.path().join("runs");
    for name in ["a", "b"] {
        common::copy_dir(&two.runs.join(name), &runs.join(name));
    }
    let live = runs.join("b");
    // A trainer working on b: it holds the lock, and its last line is a step, not
    // the end of the run.
    let mut events = read_all(&RunDir::new(&live).metrics()).expect("metrics");
    events.retain(|e| !e.is_terminal());
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("json") + "\n")
        .collect();
    std::fs::write(RunDir::new(&live).metrics(), text).expect("rewrite");
    let lock = RunDir::new(&live).lock().expect("lock");

    let (out, mut rx) = Outbox::channel();
    let mut app = App::new(AppOptions::new(runs.join("a"), two.data.clone()));
    app.update(Action::GoTab(Tab::Runs));
    let worker = RunsWorker::spawn(runs.clone(), out);
    pump(&mut app, &mut rx, "the listing", |app| {
        app.runs.runs.len() == 2
    });
    let row = |app: &App| app.runs.runs[1].clone();
    let first = row(&app);
    assert_eq!(first.summary.status, RunStatus::Training);
    assert_eq!(first.summary.pid, Some(std::process::id()));
    let steps = first.summary.step;
    let points = first.curves.loss.len();

    let more: Vec<TrainEvent> = (1..=3)
        .map(|i| TrainEvent::Step {
            step: steps + i,
            epoch: 2,
            loss: 0.1,
            active: 0.5,
            d_ap: 0.5,
            d_an: 0.7,
            lr: LR_B,
            grad_norm: 1.0,
            spread: Some(0.2),
            triplets_per_s: 10.0,
            images_per_s: Some(20.0),
            elapsed_s: 100.0 + i as f64,
        })
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(RunDir::new(&live).metrics())
        .expect("metrics");
    for e in &more {
        writeln!(f, "{}", serde_json::to_string(e).expect("json")).expect("append");
    }
    drop(f);
    worker.refresh();
    pump(&mut app, &mut rx, "the appended steps", |app| {
        row(app).summary.step == steps + 3
    });
    let now = row(&app);
    assert_eq!(now.summary.status, RunStatus::Training);
    assert_eq!(now.curves.loss.len(), points + 3);
    assert_eq!(
        now.curves.loss.last().map(|p| p.0),
        Some((steps + 3) as f64)
    );
    // The other run did not change.
    assert_eq!(app.runs.runs[0].summary, first_of(&app, "a"));

    // The trainer ends: the row says how.
    drop(lock);
    worker.refresh();
    pump(&mut app, &mut rx, "the trainer's exit", |app| {
        row(app).summary.status != RunStatus::Training
    });
    assert_eq!(row(&app).summary.status, RunStatus::Interrupted);
}

fn first_of(app: &App, name: &str) -> RunSummary {
    summarize(
        &app.runs
            .runs
            .iter()
            .find(|r| r.summary.name == name)
            .expect("row")
            .summary
            .path,
    )
}
