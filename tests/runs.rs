//! `vitrine runs`: statuses read from the lock, control file and last event; the
//! recipe and results from the run's events.

mod common;

use std::process::Command;

use vitrine::run::folder::{ControlRequest, RunDir};
use vitrine::train::runs::{RunStatus, list, summarize};
use vitrine::train::trainer::{Control, TrainJob, train};

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
