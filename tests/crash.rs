//! A real `vitrine train` killed with SIGKILL at chosen moments (mid-step, between
//! the renames of a checkpoint write, during validation) and resumed each time: the
//! run finishes, every checkpoint on disk stays consistent and loadable, and
//! `metrics.jsonl` replays every complete event.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vitrine::index::CheckpointChoice;
use vitrine::index::model::load_model;
use vitrine::model::checkpoint;
use vitrine::run::folder::RunDir;
use vitrine::train::events::TrainEvent;
use vitrine::train::metrics_log::read_all;
use vitrine::train::resume::read_meta;

fn train(data: &Path, run: &Path, config: &Path, resume: bool, hang_at: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrine"));
    cmd.args(["train", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .arg("--run")
        .arg(run)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        cmd.arg("--resume");
    }
    if let Some(point) = hang_at {
        cmd.env("VITRINE_FAULT_HANG_AT", point)
            .env("VITRINE_FAULT_MARKER", marker(run));
    }
    cmd.spawn().expect("spawn vitrine train")
}

fn marker(run: &Path) -> PathBuf {
    run.with_extension("hung")
}

/// Waits until the child reaches its hang point (true) or exits (false).
fn reached(child: &mut Child, run: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if marker(run).exists() {
            return true;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "train failed: {status}\n{err}");
            return false;
        }
        assert!(Instant::now() < deadline, "train neither hung nor ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every checkpoint on disk: its sidecar matches its weights, and it loads.
fn assert_checkpoints_load(run: &Path) {
    for choice in [CheckpointChoice::Last, CheckpointChoice::Best] {
        let path = choice.path(&RunDir::new(run));
        if !path.exists() {
            continue;
        }
        load_model(run, Some(&choice)).expect("checkpoint loads");
    }
}

#[test]
fn a_run_killed_at_any_moment_resumes_and_finishes() {
    let data = common::synth_dataset(60, 32);
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let mut config = common::tiny_train_config();
    config.train.epochs = 3;
    config.train.checkpoint_every = 2;
    config.data.workers = 1;
    let config_path = tmp.path().join("config.toml");
    std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("config");

    // Kill points, in order; each later process resumes the run.
    let kills = [
        "train-step@3",
        "checkpoint-commit@2",
        "train-step@2",
        "validation@1",
        "checkpoint-commit@1",
        "validation@2",
    ];
    let mut killed = 0;
    let mut starts = 0;
    let mut finished = false;
    for (i, point) in kills.iter().enumerate() {
        let _ = std::fs::remove_file(marker(&run));
        let mut child = train(&data, &run, &config_path, i > 0, Some(point));
        starts += 1;
        if reached(&mut child, &run) {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            killed += 1;
            assert_checkpoints_load(&run);
        } else {
            finished = true;
            break;
        }
    }
    assert!(killed >= 4, "only {killed} kills landed");
    if !finished {
        let _ = std::fs::remove_file(marker(&run));
        let mut child = train(&data, &run, &config_path, true, None);
        starts += 1;
        assert!(!reached(&mut child, &run));
    }
    // The finished run: consistent checkpoints that load, and a log that replays.
    let last = RunDir::new(&run).checkpoint(vitrine::run::folder::CheckpointKind::Last);
    let meta = read_meta(&last).expect("sidecar");
    assert_eq!(
        meta.fingerprint,
        checkpoint::fingerprint_saved(&last).expect("fingerprint")
    );
    assert_checkpoints_load(&run);
    let events = read_all(&RunDir::new(&run).metrics()).expect("metrics replay");
    let started = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Started(_)))
        .count();
    assert_eq!(started, starts, "one started event per process");
    assert!(
        matches!(events.last(), Some(TrainEvent::Done { .. })),
        "last event: {:?}",
        events.last()
    );
    // Killed between the renames of a checkpoint write, the next process rolls back
    // to the complete set kept beside it, and says so.
    assert!(
        events.iter().any(
            |e| matches!(e, TrainEvent::Notice { message, .. } if message.contains("interrupted"))
        ),
        "no roll-back notice"
    );
    // No temporary or kept files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
