//! [`Searcher`]: a run's index plus the embedder that made it. A query image is
//! embedded, the HNSW graph gives a shortlist, exact cosine re-ranks it, and the top k
//! come back as [`SearchHit`]s. The dashboard and `vitrine search` both use it.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model::{CheckpointChoice, LoadedModel, ModelError, load_model};
use super::rerank::SearchParams;
use super::store::{self, Entry, Index, IndexError, IndexHeader};
use crate::config::IndexConfig;
use crate::data::loader::{ImageSpec, LoadError, LoaderConfig, load_image};
use crate::eval::Hit;
use crate::run::folder::RunDir;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Stale(Box<StaleIndex>),
    #[error("{} holds {index}-d vectors but the run's model embeds {model}-d (model.embedding_dim in {}): re-index with `vitrine index --run {}`", dir.display(), run.join("config.toml").display(), run.display())]
    Dimension {
        dir: PathBuf,
        run: PathBuf,
        index: usize,
        model: usize,
    },
    #[error("query vector has {got} values, the index holds {expected}-d vectors")]
    QueryDim { expected: usize, got: usize },
    #[error(
        "the query's embedding is not finite (NaN or infinite values): the checkpoint's weights are damaged"
    )]
    NotFinite,
    #[error(transparent)]
    Query(#[from] LoadError),
    #[error("embedding the query failed: {0}")]
    Embed(#[from] candle_core::Error),
}

/// An index built with other weights than the checkpoint asked for.
#[derive(Debug, thiserror::Error)]
#[error("{} was built with other weights (fingerprint {index}, from {}) than {checkpoint} (fingerprint {model}): re-index with `vitrine index --run {}`", dir.display(), if index_checkpoint.is_empty() { "an untrained model" } else { index_checkpoint.as_str() }, run.display())]
pub struct StaleIndex {
    pub dir: PathBuf,
    pub run: PathBuf,
    pub index: String,
    pub index_checkpoint: String,
    pub model: String,
    pub checkpoint: String,
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// 1 = best.
    pub rank: usize,
    /// Row of the index.
    pub id: usize,
    pub path: String,
    /// Cosine similarity.
    pub score: f32,
    pub item_id: String,
    pub category: String,
}

/// A loaded index with its embedder.
#[derive(Debug)]
pub struct Searcher {
    run: PathBuf,
    model: LoadedModel,
    index: Index,
    loader: LoaderConfig,
    params: SearchParams,
}

impl Searcher {
    /// Opens `RUN/index/` with the run's model and `checkpoint`'s weights; fails when
    /// the index is missing or damaged, or was built with other weights. Search
    /// settings come from the run's `[index]` section (see [`Self::with_settings`]).
    pub fn open(run: &Path, checkpoint: &CheckpointChoice) -> Result<Self, SearchError> {
        let dir = RunDir::new(run).index_dir();
        let header = store::read_header(&dir)?;
        // `auto` means the weights the index was built with, while they exist.
        let recorded = PathBuf::from(&header.checkpoint);
        let checkpoint = match checkpoint {
            CheckpointChoice::Auto if !header.checkpoint.is_empty() && recorded.is_file() => {
                &CheckpointChoice::Path(recorded)
            }
            c => c,
        };
        let model = load_model(run, Some(checkpoint))?;
        let model_dim = model.embedder.config().embedding_dim;
        if header.dim != model_dim {
            return Err(SearchError::Dimension {
                dir,
                run: run.to_path_buf(),
                index: header.dim,
                model: model_dim,
            });
        }
        if header.fingerprint != model.fingerprint {
            return Err(SearchError::Stale(Box::new(StaleIndex {
                dir,
                run: run.to_path_buf(),
                index: header.fingerprint,
                index_checkpoint: header.checkpoint,
                model: model.fingerprint.clone(),
                checkpoint: model
                    .checkpoint
                    .as_deref()
                    .map_or_else(|| checkpoint.to_string(), |p| p.display().to_string()),
            })));
        }
        let index = store::load(&dir)?;
        let loader = LoaderConfig {
            size: model.config.model.image_size,
            crop: false,
            workers: 1,
            prefetch: 1,
            max_pixels: model.config.data.max_image_pixels,
        };
        let params = params_of(&model.config.index);
        Ok(Self {
            run: run.to_path_buf(),
            model,
            index,
            loader,
            params,
        })
    }

    /// Uses `settings`' shortlist and beam width.
    #[must_use]
    pub fn with_settings(mut self, settings: &IndexConfig) -> Self {
        self.params = params_of(settings);
        self
    }

    pub fn set_params(&mut self, params: SearchParams) {
        self.params = params;
    }

    pub fn params(&self) -> SearchParams {
        self.params
    }

    pub fn run(&self) -> &Path {
        &self.run
    }

    pub fn header(&self) -> &IndexHeader {
        &self.index.header
    }

    pub fn entries(&self) -> &[Entry] {
        &self.index.entries
    }

    pub fn len(&self) -> usize {
        self.index.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.entries.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.index.header.dim
    }

    /// The embedder and the run settings it was loaded with.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// The gallery's float vectors, one row per entry.
    pub fn vectors(&self) -> &super::npy::Matrix {
        self.index.vectors.vectors()
    }

    /// The checkpoint the model was loaded from.
    pub fn checkpoint(&self) -> Option<&Path> {
        self.model.checkpoint.as_deref()
    }

    /// The unit embedding of an image file (whole image, no crop).
    pub fn embed_image(&self, path: &Path) -> Result<Vec<f32>, SearchError> {
        let spec = ImageSpec {
            path: path.to_path_buf(),
            bbox: None,
        };
        let pixels = load_image(&spec, &self.loader)?;
        let s = self.loader.size as usize;
        let x = Tensor::from_vec(pixels, (1, 3, s, s), &self.model.device)?;
        let v = self
            .model
            .embedder
            .embed(&x)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(v)
    }

    /// Embeds `path` and returns its `k` nearest gallery images (HNSW + re-rank).
    pub fn search_image(&self, path: &Path, k: usize) -> Result<Vec<SearchHit>, SearchError> {
        let v = self.embed_image(path)?;
        self.search_vector(&v, k)
    }

    /// The `k` nearest gallery images of an embedding (HNSW shortlist + exact re-rank).
    pub fn search_vector(&self, v: &[f32], k: usize) -> Result<Vec<SearchHit>, SearchError> {
        self.check_dim(v)?;
        Ok(self.hits(&self.index.vectors.search(v, k, self.params)))
    }

    /// The exact `k` nearest gallery images of an embedding (full scan).
    pub fn search_exact(&self, v: &[f32], k: usize) -> Result<Vec<SearchHit>, SearchError> {
        self.check_dim(v)?;
        Ok(self.hits(&self.index.vectors.exact(v, k)))
    }

    fn check_dim(&self, v: &[f32]) -> Result<(), SearchError> {
        if v.len() != self.dim() {
            return Err(SearchError::QueryDim {
                expected: self.dim(),
                got: v.len(),
            });
        }
        if !v.iter().all(|x| x.is_finite()) {
            return Err(SearchError::NotFinite);
        }
        Ok(())
    }

    fn hits(&self, hits: &[Hit]) -> Vec<SearchHit> {
        hits.iter()
            .enumerate()
            .filter_map(|(r, h)| {
                let e = self.index.entries.get(h.index)?;
                Some(SearchHit {
                    rank: r + 1,
                    id: h.index,
                    path: e.path.clone(),
                    score: h.score,
                    item_id: e.item_id.clone(),
                    category: e.category.clone(),
                })
            })
            .collect()
    }
}

/// Search settings of an `[index]` section.
pub fn params_of(settings: &IndexConfig) -> SearchParams {
    SearchParams {
        shortlist: settings.shortlist,
        ef: settings.ef_search,
        int8: true,
    }
}
