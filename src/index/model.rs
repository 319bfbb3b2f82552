//! The embedder an index is built with: the run's model settings (its
//! `config.toml`), weights from a checkpoint (or a seeded, untrained network), and
//! the fingerprint that ties an index to them: the weights', and the settings that
//! embed the same weights differently.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use candle_nn::VarMap;

use crate::config::{Config, ConfigError};
use crate::model::checkpoint::{self, CheckpointError};
use crate::model::{Embedder, EmbedderConfig, Precision};
use crate::run::device;
use crate::run::folder::CheckpointKind;
use crate::run::folder::RunDir;
use crate::run::settings::RunSettingsError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{} is not a run folder: {} is missing (train one with `vitrine train --run {}`)", run.display(), run.join("config.toml").display(), run.display())]
    NotARun { run: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("checkpoint {} does not exist{}", path.display(), hint)]
    NoCheckpoint { path: PathBuf, hint: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{}: train.device: {message}", config.display())]
    Device { config: PathBuf, message: String },
    #[error("--device: {0}")]
    DeviceFlag(device::DeviceError),
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
}

/// Which weights to use: the run's `best` or `last` checkpoint, or a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckpointChoice {
    /// `best`, else `last` (a run that never validated has no `best`).
    #[default]
    Auto,
    Best,
    Last,
    Path(PathBuf),
}

impl FromStr for CheckpointChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Self::Auto,
            "best" => Self::Best,
            "last" => Self::Last,
            "" => return Err("empty checkpoint: expected best, last or a file path".into()),
            p => Self::Path(PathBuf::from(p)),
        })
    }
}

impl fmt::Display for CheckpointChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Best => f.write_str("best"),
            Self::Last => f.write_str("last"),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl CheckpointChoice {
    /// The safetensors file this choice names in `run`.
    pub fn path(&self, run: &RunDir) -> PathBuf {
        match self {
            Self::Auto => {
                let best = run.checkpoint(CheckpointKind::Best);
                if best.is_file() {
                    best
                } else {
                    run.checkpoint(CheckpointKind::Last)
                }
            }
            Self::Best => run.checkpoint(CheckpointKind::Best),
            Self::Last => run.checkpoint(CheckpointKind::Last),
            Self::Path(p) => p.clone(),
        }
    }
}

/// An embedder ready to use, with where its weights came from.
pub struct LoadedModel {
    pub embedder: Embedder,
    pub varmap: VarMap,
    /// The run's resolved settings (`RUN/config.toml`).
    pub config: Config,
    pub device: Device,
    /// `None` for the untrained network.
    pub checkpoint: Option<PathBuf>,
    /// [`embedding_fingerprint`] of the weights and settings.
    pub fingerprint: String,
}

/// What an index records of the embedder that filled it: the weights'
/// [`checkpoint::fingerprint`], followed by the settings that change the embedding of
/// the same weights — the generalised-mean pool, the test-time views and the bf16
/// precision — when they
/// are not the defaults (so the fingerprints of indexes made before those settings
/// existed still match). A gallery embedded one way is then never searched with
/// queries embedded another: changing `model.invert_average` in a run's
/// `config.toml` asks for a re-index instead of silently mixing the two.
pub fn embedding_fingerprint(weights: String, cfg: &EmbedderConfig) -> String {
    let gem = (cfg.gem_p != 1.0).then(|| format!("+gem{}", cfg.gem_p));
    let mirror = cfg.flip_average.then_some("+mirror");
    let negative = cfg.invert_average.then_some("+negative");
    let bf16 = (cfg.precision == Precision::Bf16).then_some("+bf16");
    format!(
        "{weights}{}{}{}{}",
        gem.unwrap_or_default(),
        mirror.unwrap_or_default(),
        negative.unwrap_or_default(),
        bf16.unwrap_or_default()
    )
}

impl fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModel")
            .field("embedder", &self.embedder.config())
            .field("device", &self.device)
            .field("checkpoint", &self.checkpoint)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The run's `config.toml` (model settings, seed, device); strict: an unreadable one
/// is an error (the lenient reader is [`crate::run::settings::load_or_fallback`]).
pub fn run_config_strict(run: &Path) -> Result<Config, ModelError> {
    crate::run::settings::load(run).map_err(|e| match e {
        RunSettingsError::NotARun { run } => ModelError::NotARun { run },
        RunSettingsError::Config(e) => ModelError::Config(e),
    })
}

/// Builds the run's embedder and loads `checkpoint` into it; `None` keeps the seeded
/// initial weights (`train.seed`): the untrained baseline.
pub fn load_model(
    run: &Path,
    checkpoint: Option<&CheckpointChoice>,
) -> Result<LoadedModel, ModelError> {
    let config = run_config_strict(run)?;
    let dir = RunDir::new(run);
    // The device it was trained on, or `--device`, or the CPU where there is no GPU.
    let device = device::parse_device(&config.train.device)
        .map_err(|message| ModelError::Device {
            config: dir.config(),
            message,
        })
        .and_then(|trained_on| {
            device::select_for_inference(trained_on).map_err(|e| {
                if device::inference_device().is_some() {
                    ModelError::DeviceFlag(e)
                } else {
                    ModelError::Device {
                        config: dir.config(),
                        message: e.to_string(),
                    }
                }
            })
        })?;
    let (embedder, varmap) = Embedder::seeded(config.model.embedder(), &device, config.train.seed)?;
    let path = match checkpoint {
        Some(choice) => {
            let path = choice.path(&dir);
            if !path.is_file() {
                let hint = match choice {
                    CheckpointChoice::Path(_) => String::new(),
                    CheckpointChoice::Auto => format!(
                        ": run {} has no checkpoint yet (train it with `vitrine train --run {}`)",
                        run.display(),
                        run.display()
                    ),
                    _ => format!(
                        ": run {} has no {choice} checkpoint yet (train it with `vitrine train --run {}`, or pick --checkpoint last|PATH)",
                        run.display(),
                        run.display()
                    ),
                };
                return Err(ModelError::NoCheckpoint { path, hint });
            }
            if *choice == CheckpointChoice::Auto && path == dir.checkpoint(CheckpointKind::Last) {
                tracing::warn!(
                    "run {} has no best checkpoint (it never validated); using its last one",
                    run.display()
                );
            }
            checkpoint::load_full(&varmap, &path)?;
            Some(path)
        }
        None => None,
    };
    let fingerprint = embedding_fingerprint(checkpoint::fingerprint(&varmap)?, &embedder.config());
    Ok(LoadedModel {
        embedder,
        varmap,
        config,
        device,
        checkpoint: path,
        fingerprint,
    })
}
