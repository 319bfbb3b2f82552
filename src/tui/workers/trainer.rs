//! Starts the trainer as its own process.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Stdio};

use crate::config::Config;
use crate::run::folder::CheckpointKind;
use crate::run::folder::RunDir;

/// Starts `vitrine train` for the run as a detached process: its own process group
/// (Ctrl-C in the dashboard's terminal and a dropped SSH link do not reach it), stdin
/// closed, stdout and stderr appended to `RUN/vitrine.log`. The settings go in
/// `RUN/launch.toml`; an existing `last` checkpoint is resumed. `exe` is the vitrine
/// binary (`std::env::current_exe()` in the dashboard).
pub fn spawn_trainer(
    exe: &Path,
    config: &Config,
    data: &Path,
    run: &Path,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let dir = RunDir::new(run);
    dir.create().map_err(std::io::Error::other)?;
    let resume = dir.checkpoint(CheckpointKind::Last).is_file();
    let mut cfg = config.clone();
    cfg.data.root = data.to_path_buf();
    cfg.train.run = run.to_path_buf();
    let launch = run.join("launch.toml");
    let text = toml::to_string(&cfg).map_err(std::io::Error::other)?;
    crate::fsutil::write_bytes_atomic(&launch, text.as_bytes())?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("train")
        .arg("--data")
        .arg(data)
        .arg("--run")
        .arg(run)
        .arg("--config")
        .arg(&launch);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0);
    tracing::info!("starting {cmd:?}");
    cmd.spawn()
}
