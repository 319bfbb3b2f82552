//! What can end a training run: every error of the pieces it drives, plus its own
//! (a refused setting or resume, a value that stopped being finite, a write that
//! failed).

use std::path::PathBuf;

use super::metrics_log::MetricsError;
use super::validation::ValidationError;
use crate::data::deepfashion::DatasetError;
use crate::data::loader::LoadError;
use crate::data::triplets::TripletError;
use crate::model::checkpoint::CheckpointError;
use crate::model::embed_files::EmbedError;
use crate::run::folder::RunError;
use crate::weights::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Triplets(#[from] TripletError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("the {what} became {value} at step {step}; stopped, {}", match checkpoint {
        Some(p) => format!("the last good checkpoint is kept ({})", p.display()),
        None => "before any checkpoint was written".into(),
    })]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f32,
        /// The run's `last` checkpoint, when it has one.
        checkpoint: Option<PathBuf>,
    },
    #[error("cannot resume {}: {reason}", run.display())]
    Resume { run: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
