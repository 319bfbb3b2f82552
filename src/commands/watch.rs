//! `vitrine watch RUN`: attach read-only to a run another process trains. On a
//! terminal: the dashboard (it replays `metrics.jsonl` from the start, then follows
//! it). Elsewhere: every event as a JSON line on stdout until the run ends.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::dashboard::{Opening, open};
use crate::cli::WatchArgs;
use crate::config::Config;
use crate::printable;
use crate::run::folder::RunDir;
use crate::train::metrics_log::MetricsFollower;

pub fn run(config: &Config, args: &WatchArgs, log: Option<&Path>) -> anyhow::Result<()> {
    let dir = RunDir::new(&args.run);
    if !dir.root.is_dir() {
        anyhow::bail!(
            "{} is not a run folder (start one with `vitrine train --run {}`)",
            dir.root.display(),
            dir.root.display()
        );
    }
    // The run's own settings name its dataset (the Dataset and Triplets tabs).
    let run_config = crate::run::settings::load_or_fallback(&dir.root, config);
    if !std::io::stdout().is_terminal() {
        crate::logging::init(log, true).context("cannot open the log file")?;
        return follow_lines(&dir);
    }
    let mut config = config.clone();
    config.data = run_config.data.clone();
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| run_config.data.root.clone());
    open(
        &config,
        data,
        dir.root.clone(),
        args.theme.as_deref(),
        log,
        Opening {
            read_only: true,
            runs: args.runs.clone(),
            ..Opening::default()
        },
    )
}

/// Prints every event of the run as a JSON line, following it while a trainer
/// holds the run; returns when the run ended and no trainer is left.
fn follow_lines(dir: &RunDir) -> anyhow::Result<()> {
    let mut follower = MetricsFollower::new(&dir.metrics());
    loop {
        let events = follower.poll()?;
        let mut ended = false;
        for e in &events {
            // A closed stdout ends the watch cleanly (`watch RUN | head -1`).
            crate::output::line(&printable::json(e)?)?;
            ended = e.is_terminal();
        }
        if !follower.caught_up() {
            continue;
        }
        if (ended || events.is_empty()) && dir.locked_by().is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
