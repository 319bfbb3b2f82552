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

/// The run's settings, else `fallback`: lenient where [`load`] is strict (a run not
/// started yet, or unreadable settings, which are logged).
pub fn load_or_fallback(run: &Path, fallback: &Config) -> Config {
    match load(run) {
        Ok(c) => c,
        Err(RunSettingsError::NotARun { .. }) => fallback.clone(),
        Err(e) => {
            tracing::warn!("{e}");
            fallback.clone()
        }
    }
}

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SettingDiff {
    /// Dotted key, e.g. `train.lr`.
    pub key: String,
    /// The value in each, as TOML text; `None` where the key is absent.
    pub a: Option<String>,
    pub b: Option<String>,
}

fn flatten(
    prefix: &str,
    value: &toml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => {
            out.insert(prefix.to_string(), v.to_string());
        }
    }
}

/// The settings that differ between `a` and `b`, by key.
pub fn diff(a: &Config, b: &Config) -> Vec<SettingDiff> {
    let table = |c: &Config| {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(v) = toml::Value::try_from(c) {
            flatten("", &v, &mut out);
        }
        out
    };
    let (ta, tb) = (table(a), table(b));
    let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    keys.into_iter()
        .filter(|k| ta.get(*k) != tb.get(*k))
        .map(|k| SettingDiff {
            key: k.clone(),
            a: ta.get(k).cloned(),
            b: tb.get(k).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lists_only_the_keys_that_differ() {
        let a = Config::default();
        assert!(diff(&a, &a).is_empty());
        let mut b = a.clone();
        b.train.lr = 0.5;
        b.model.image_size = 96;
        let d = diff(&a, &b);
        let keys: Vec<&str> = d.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["model.image_size", "train.lr"]);
        assert_eq!(d[1].b.as_deref(), Some("0.5"));
    }
}
