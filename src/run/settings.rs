//! A run's resolved settings: the `config.toml` its trainer wrote into the run folder
//! (model shape, seed, device), which indexing, search and the dashboard must use
//! rather than their own.

use std::path::{Path, PathBuf};

use super::folder::RunDir;
use crate::config::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum RunSettingsError {
    #[error("{} is not a run folder: {} is missing (train one with `vitrine train --run {}`)", run.display(), run.join("config.toml").display(), run.display())]
    NotARun { run: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The run's `config.toml`, read as a run's (older files migrated).
pub fn load(run: &Path) -> Result<Config, RunSettingsError> {
    let path = RunDir::new(run).config();
    if !path.is_file() {
        return Err(RunSettingsError::NotARun {
            run: run.to_path_buf(),
        });
    }
    Ok(Config::load_run(&path)?)
}

/// The run's settings, else `fallback` (a run not started yet, or unreadable
/// settings, which are logged).
pub fn load_or(run: &Path, fallback: &Config) -> Config {
    match load(run) {
        Ok(c) => c,
        Err(RunSettingsError::NotARun { .. }) => fallback.clone(),
        Err(e) => {
            tracing::warn!("{e}");
            fallback.clone()
        }
    }
}
