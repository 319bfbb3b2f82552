use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;

use super::dashboard::{Opening, open};
use crate::cli::{DataArgs, DemoArgs};
use crate::config::Config;
use crate::data::deepfashion::PARTITION_FILE;
use crate::data::synth::SynthOptions;
use crate::run::CheckpointKind;
use crate::run::folder::RunDir;
use crate::train::events::{StopReason, TrainEvent};
use crate::train::job::TrainJob;
use crate::train::metrics_log::read_all;
use crate::tui::tabs::search::IndexStatus;

/// The built-in synthetic set (made if absent), then on a terminal the dashboard
/// training the demo run with the configured (CPU demo) defaults and building the
/// index when training ends; without a terminal the split table and headless training.
pub fn run(config: &Config, args: &DemoArgs, log: Option<&Path>) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| config.data.root.clone());
    let tty = std::io::stdout().is_terminal();
    if !tty {
        crate::logging::init(log, true).context("cannot open the log file")?;
    }
    ensure_dataset(config, &dir)?;
    if !tty {
        return headless(config, &dir);
    }
    let run = RunDir::new(&config.train.run);
    let live = run.locked_by().is_some();
    let finished = run_finished(&run);
    let opening = Opening {
        read_only: false,
        // A live trainer is attached to; a finished run is shown, not retrained.
        start_training: !live && !finished,
        build_index: !live
            && finished
            && crate::tui::workers::index_status(&run.root) == IndexStatus::Missing,
        auto_index: true,
        runs: None,
    };
    open(config, dir, run.root, args.theme.as_deref(), log, opening)
}

fn ensure_dataset(config: &Config, dir: &Path) -> anyhow::Result<()> {
    if dir.join(PARTITION_FILE).is_file() {
        eprintln!("using the dataset at {}", dir.display());
    } else {
        eprintln!("making the built-in synthetic dataset at {}", dir.display());
        let opts = SynthOptions {
            items: config.synth.items,
            size: config.synth.size,
            seed: config.synth.seed,
        };
        super::synth::write(&opts, dir, true)?;
    }
    Ok(())
}

/// Whether the run's newest outcome is "all epochs ran".
fn run_finished(run: &RunDir) -> bool {
    read_all(&run.metrics()).is_ok_and(|events| {
        events
            .iter()
            .rev()
            .find(|e| e.is_terminal())
            .is_some_and(|e| {
                matches!(
                    e,
                    TrainEvent::Done {
                        reason: StopReason::Finished,
                        ..
                    }
                )
            })
    })
}

/// Split table, then training in the foreground (no terminal: CI, pipes).
fn headless(config: &Config, dir: &Path) -> anyhow::Result<()> {
    let ds = super::open_dataset(
        config,
        &DataArgs {
            data: Some(dir.to_path_buf()),
            strict: false,
        },
    )?;
    eprint!(
        "{}",
        super::splits::render_table(&ds.summary(config.data.gallery))
    );
    drop(ds);
    let run = RunDir::new(&config.train.run);
    let resume = run.checkpoint(CheckpointKind::Last).exists();
    if resume {
        eprintln!(
            "continuing the demo run in {} (delete it to start over)",
            run.root.display()
        );
    }
    // A resumed run continues with its own settings, as `train --resume` does.
    let config = super::train::base_settings(config, &run.root, resume)?;
    let job = TrainJob {
        config,
        data: dir.to_path_buf(),
        run: run.root,
        resume,
    };
    super::train::run_job(&job, false)
}
