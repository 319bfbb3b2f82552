//! `vitrine dashboard`: the ratatui dashboard on a dataset and a run.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::DashboardArgs;
use crate::config::Config;
use crate::run::folder::RunDir;
use crate::theme::Theme;
use crate::tui::Launch;

pub fn run(config: &Config, args: &DashboardArgs, log: Option<&Path>) -> anyhow::Result<()> {
    let run = args.run.clone().unwrap_or_else(|| config.train.run.clone());
    // The run's dataset when it has trained, as `watch`, `index` and `eval` do.
    let data = super::RunData::of(config, &run, args.data.as_deref()).root;
    open(
        config,
        data,
        run,
        args.theme.as_deref(),
        log,
        Opening {
            runs: args.runs.clone(),
            ..Opening::default()
        },
    )
}

/// What the dashboard does by itself once open.
#[derive(Debug, Clone, Default)]
pub struct Opening {
    pub read_only: bool,
    pub start_training: bool,
    pub build_index: bool,
    pub auto_index: bool,
    /// The Runs tab's folder (`--runs`) [default: the run's parent].
    pub runs: Option<PathBuf>,
}

/// Resolves the theme (errors still print normally), sends logs to the run's log
/// file (or `--log`) with nothing on the terminal, and runs the dashboard.
pub fn open(
    config: &Config,
    data: PathBuf,
    run: PathBuf,
    theme: Option<&str>,
    log: Option<&Path>,
    opening: Opening,
) -> anyhow::Result<()> {
    let theme = Theme::load(theme.unwrap_or(&config.ui.theme))?;
    let log_path = log.map_or_else(|| RunDir::new(&run).log(), Path::to_path_buf);
    crate::logging::init(Some(&log_path), false)
        .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
    crate::tui::run(Launch {
        config: config.clone(),
        data,
        run,
        theme,
        read_only: opening.read_only,
        start_training: opening.start_training,
        build_index: opening.build_index,
        auto_index: opening.auto_index,
        runs: opening.runs,
    })
}
