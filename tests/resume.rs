//! A run owns its settings (issue 25): the real binary resumes a run with its own
//! `config.toml`, records and refuses changes, finds the run's dataset from any
//! folder, and stops cleanly when the reader of its stdout goes away.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vitrine::run::folder::CheckpointKind;
use vitrine::run::folder::RunDir;
use vitrine::train::events::{RunStarted, StopReason, TrainEvent};
use vitrine::train::metrics_log::read_all;
use vitrine::train::resume::read_meta;

/// Small and quick: P×K batches of 2 images per item, checkpoints only at the end.
const SMALL: &str = "[train]\npk_images = 2\ncheckpoint_every = 0\nwarmup_steps = 0\nepochs = 1\ndevice = \"cpu\"\n[data]\nworkers = 1\n";

fn vitrine(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run vitrine")
}

/// Runs vitrine with its stdout's reader already gone.
fn vitrine_closed_stdout(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vitrine");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
}

/// A folder with a small synthetic set `d` and the settings file `small.toml`.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let out = vitrine(
        &work,
        &["synth", "--out", "d", "--items", "24", "--size", "64"],
    );
    ok(&out, "synth");
    std::fs::write(work.join("small.toml"), SMALL).expect("settings");
    (tmp, work)
}

fn events_on_stdout(out: &Output) -> Vec<TrainEvent> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event per line"))
        .collect()
}

fn started(events: &[TrainEvent]) -> (u32, String, String, usize, usize) {
    events
        .iter()
        .find_map(|e| match e {
            TrainEvent::Started(RunStarted {
                image_size,
                loss,
                mining,
                batch,
                batch_images,
                ..
            }) => Some((
                *image_size,
                loss.clone(),
                mining.clone(),
                *batch,
                *batch_images,
            )),
            _ => None,
        })
        .expect("a started event")
}

fn changed_keys(events: &[TrainEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::SettingsChanged { changes, .. } => {
                Some(changes.iter().map(|c| c.key.clone()).collect())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_resumed_run_keeps_its_settings_and_commands_find_its_dataset() {
    let (tmp, work) = workspace();
    // Relative paths, as typed by a user in `work`.
    let out = vitrine(
        &work,
        &[
            "--config",
            "small.toml",
            "train",
            "--data",
            "d",
            "--run",
            "runs/t1",
            "--image-size",
            "32",
            "--mining",
            "batch_hard",
            "--batch",
            "4",
            "--max-steps",
            "2",
            "--json",
        ],
    );
    ok(&out, "train");
    // Item 6: under P×K, --batch is the number of items per batch.
    assert_eq!(
        started(&events_on_stdout(&out)),
        (32, "triplet".into(), "batch_hard".into(), 4, 8)
    );
    let run = work.join("runs/t1");
    let metrics = RunDir::new(&run).metrics();
    // Items 2 and 3: the saved settings name this run and its dataset, absolutely.
    let saved = vitrine::run::settings::load(&run).expect("config.toml");
    assert_eq!(saved.train.run, run);
    assert_eq!(saved.data.root, work.join("d"));

    // Item 1: resumed from another folder with only --resume (and a new step limit):
    // still a 32 px batch-hard run, whatever the built-in defaults say.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let run_arg = run.to_str().expect("utf-8");
    let out = vitrine(
        &elsewhere,
        &[
            "train",
            "--run",
            run_arg,
            "--resume",
            "--max-steps",
            "3",
            "--json",
        ],
    );
    ok(&out, "resume");
    let events = events_on_stdout(&out);
    assert_eq!(
        started(&events),
        (32, "triplet".into(), "batch_hard".into(), 4, 8)
    );
    assert_eq!(changed_keys(&events), [["train.max_steps"]]);
    // A flag that changes a setting is printed and recorded.
    let out = vitrine(
        &elsewhere,
        &[
            "train",
            "--run",
            run_arg,
            "--resume",
            "--max-steps",
            "4",
            "--image-size",
            "48",
        ],
    );
    ok(&out, "resume at 48 px");
    assert!(
        text(&out.stderr).contains("model.image_size 32 → 48"),
        "{}",
        text(&out.stderr)
    );
    let logged = read_all(&metrics).expect("metrics");
    assert!(
        changed_keys(&logged)
            .last()
            .is_some_and(|k| k.contains(&"model.image_size".to_string())),
        "{:?}",
        changed_keys(&logged)
    );
    // A change the checkpoint cannot honour is refused, and the run is left as it was.
    let before = std::fs::read(&metrics).expect("metrics");
    let out = vitrine(
        &elsewhere,
        &[
            "train",
            "--run",
            run_arg,
            "--resume",
            "--loss",
            "norm_softmax",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("loss.kind triplet → norm_softmax") && err.contains("new --run"),
        "{err}"
    );
    assert_eq!(std::fs::read(&metrics).expect("metrics"), before);
    // Item 2: another run's settings file (a copy) never writes into the run it names.
    let copy = work.join("runs/t2");
    common::copy_dir(&run, &copy);
    let copied_config = copy.join("config.toml");
    let out = vitrine(
        &elsewhere,
        &[
            "--config",
            copied_config.to_str().expect("utf-8"),
            "train",
            "--resume",
            "--max-steps",
            "5",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--run"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&metrics).expect("metrics"), before);
    // Its own settings file continues the run it names.
    let own_config = run.join("config.toml");
    let out = vitrine(
        &elsewhere,
        &[
            "--config",
            own_config.to_str().expect("utf-8"),
            "train",
            "--resume",
            "--max-steps",
            "5",
            "--json",
        ],
    );
    ok(&out, "resume through the run's own config.toml");
    assert!(matches!(
        events_on_stdout(&out).last(),
        Some(TrainEvent::Done {
            step: 5,
            reason: StopReason::MaxSteps,
            ..
        })
    ));

    // Item 4: `index --run` from another folder indexes the run's dataset…
    let out = vitrine(&elsewhere, &["index", "--run", run_arg, "--json"]);
    ok(&out, "index");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["source"]["root"].as_str(),
        work.join("d").to_str(),
        "{report}"
    );
    // …and when that dataset has moved, says so and suggests --data.
    std::fs::rename(work.join("d"), work.join("moved")).expect("move");
    let out = vitrine(&elsewhere, &["index", "--run", run_arg]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--data") && !err.contains("synth --out"),
        "{err}"
    );
    let moved = work.join("moved");
    let out = vitrine(
        &elsewhere,
        &[
            "eval",
            "--run",
            run_arg,
            "--data",
            moved.to_str().expect("utf-8"),
        ],
    );
    ok(&out, "eval with --data");
}

/// Item 7: a closed stdout is a clean stop in every command: `train --json` writes its
/// checkpoint and exits 0; the others exit 0 without a panic.
#[test]
fn a_closed_stdout_is_a_clean_stop() {
    let (_tmp, work) = workspace();
    let out = vitrine_closed_stdout(
        &work,
        &[
            "--config",
            "small.toml",
            "train",
            "--data",
            "d",
            "--run",
            "runs/p",
            "--image-size",
            "32",
            "--batch",
            "4",
            "--max-steps",
            "500",
            "--json",
        ],
    );
    ok(&out, "train --json with its reader gone");
    let run = RunDir::new(&work.join("runs/p"));
    assert!(read_meta(&run.checkpoint(CheckpointKind::Last)).is_ok());
    assert!(matches!(
        read_all(&run.metrics()).expect("metrics").last(),
        Some(TrainEvent::Done {
            reason: StopReason::Interrupted,
            ..
        })
    ));
    ok(&vitrine(&work, &["index", "--run", "runs/p"]), "index");
    let image = std::fs::read_to_string(work.join("d/Eval/list_eval_partition.txt"))
        .expect("partition")
        .lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .map(|p| format!("d/{p}"))
        .expect("an image");
    let commands: [&[&str]; 8] = [
        &["runs", "--dir", "runs"],
        &["runs", "--dir", "runs", "--json"],
        &["splits", "--data", "d"],
        &["watch", "runs/p"],
        &["eval", "--raw-pixels", "--data", "d"],
        &["index", "--run", "runs/p", "--json"],
        &["search", "--run", "runs/p", &image, "--json"],
        &["synth", "--out", "d2", "--items", "12", "--size", "32"],
    ];
    for args in commands {
        let out = vitrine_closed_stdout(&work, args);
        let err = text(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked"),
            "{args:?}: {:?}\n{err}",
            out.status
        );
    }
}
