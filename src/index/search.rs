//! [`Searcher`]: a run's index plus the embedder that made it. A query image is
//! embedded, the HNSW graph gives a shortlist, exact cosine re-ranks it, and the top k
//! come back as [`SearchHit`]s. The dashboard and `vitrine search` both use it.
//! Where the gallery lives is what `RUN/index/` records: the in-process index, or a
//! table in PostgreSQL ([`super::postgres`]) searched the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model::{CheckpointChoice, LoadedModel, ModelError, load_model};
use super::npy::Matrix;
use super::postgres::gallery::{GalleryRows, LiveVersion};
use super::postgres::{PgError, PgGallery, PgRecord, PgUrl, record};
use super::rerank::SearchParams;
use super::store::{self, Entry, Index, IndexError, IndexHeader};
use super::tune::EfChoice;
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
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// An index built with other weights (or embedding settings) than the checkpoint asked for.
#[derive(Debug, thiserror::Error)]
#[error("{} was built with other weights or embedding settings (fingerprint {index}, from {}) than {checkpoint} (fingerprint {model}): re-index with `vitrine index --run {}`", dir.display(), if index_checkpoint.is_empty() { "an untrained model" } else { index_checkpoint.as_str() }, run.display())]
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

/// Where the searched gallery lives.
#[derive(Debug)]
// One per searcher, built once: boxing the in-memory index would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Gallery {
    /// `RUN/index/` loaded into memory.
    Local(Index),
    /// A table in PostgreSQL (`RUN/index/postgres.json`).
    Postgres(Box<(PgGallery, PgRecord)>),
}

/// The gallery's rows and vectors, borrowed from memory or read from PostgreSQL once.
pub enum GalleryView<'a> {
    Borrowed {
        entries: &'a [Entry],
        vectors: &'a Matrix,
    },
    Shared(Arc<GalleryRows>),
}

impl GalleryView<'_> {
    pub fn entries(&self) -> &[Entry] {
        match self {
            Self::Borrowed { entries, .. } => entries,
            Self::Shared(rows) => &rows.entries,
        }
    }

    /// One row per entry.
    pub fn vectors(&self) -> &Matrix {
        match self {
            Self::Borrowed { vectors, .. } => vectors,
            Self::Shared(rows) => &rows.vectors,
        }
    }
}

/// A loaded index with its embedder.
#[derive(Debug)]
pub struct Searcher {
    run: PathBuf,
    model: LoadedModel,
    gallery: Gallery,
    loader: LoaderConfig,
    params: SearchParams,
    /// The index's measured beam, when `params` use it (`index.ef_search` = 0).
    tuned: Option<EfChoice>,
}

impl Searcher {
    /// Opens `RUN/index/` with the run's model and `checkpoint`'s weights; fails when
    /// the index is missing or damaged, or was built with other weights. Search
    /// settings come from the run's `[index]` section (see [`Self::with_settings`]).
    pub fn open(run: &Path, checkpoint: &CheckpointChoice) -> Result<Self, SearchError> {
        let dir = RunDir::new(run).index_dir();
        if let Some(record) = record::read(&dir)? {
            return Self::open_postgres(run, checkpoint, dir, record);
        }
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
        Ok(Self::new(run, model, Gallery::Local(index)))
    }

    fn new(run: &Path, model: LoadedModel, gallery: Gallery) -> Self {
        let loader = LoaderConfig {
            size: model.config.model.image_size,
            crop: false,
            workers: 1,
            prefetch: 1,
            max_pixels: model.config.data.max_image_pixels,
        };
        let settings = model.config.index.clone();
        let searcher = Self {
            run: run.to_path_buf(),
            model,
            gallery,
            loader,
            params: SearchParams::default(),
            tuned: None,
        };
        searcher.with_settings(&settings)
    }

    /// A run whose gallery is in PostgreSQL: the record's weights must be the model's,
    /// and so must those of the version live in the database now.
    fn open_postgres(
        run: &Path,
        checkpoint: &CheckpointChoice,
        dir: PathBuf,
        record: PgRecord,
    ) -> Result<Self, SearchError> {
        let recorded = PathBuf::from(&record.checkpoint);
        let checkpoint = match checkpoint {
            CheckpointChoice::Auto if !record.checkpoint.is_empty() && recorded.is_file() => {
                &CheckpointChoice::Path(recorded)
            }
            c => c,
        };
        let model = load_model(run, Some(checkpoint))?;
        let model_dim = model.embedder.config().embedding_dim;
        if record.dim != model_dim {
            return Err(SearchError::Dimension {
                dir,
                run: run.to_path_buf(),
                index: record.dim,
                model: model_dim,
            });
        }
        if record.fingerprint != model.fingerprint {
            return Err(SearchError::Stale(Box::new(StaleIndex {
                dir,
                run: run.to_path_buf(),
                index: record.fingerprint,
                index_checkpoint: record.checkpoint,
                model: model.fingerprint.clone(),
                checkpoint: model
                    .checkpoint
                    .as_deref()
                    .map_or_else(|| checkpoint.to_string(), |p| p.display().to_string()),
            })));
        }
        let what = dir.join(record::RECORD_FILE).display().to_string();
        let url = PgUrl::resolve(&record.url, &what)?;
        let gallery = PgGallery::open(url, &record)?;
        let searcher = Self::new(run, model, Gallery::Postgres(Box::new((gallery, record))));
        if let Gallery::Postgres(pg) = &searcher.gallery {
            searcher.accept(&pg.0.live())?;
        }
        Ok(searcher)
    }

    /// Whether a live version in PostgreSQL holds this model's vectors.
    fn accept(&self, live: &LiveVersion) -> Result<(), PgError> {
        let Gallery::Postgres(pg) = &self.gallery else {
            return Ok(());
        };
        let (url, table) = (pg.0.url().shown(), pg.0.table().to_string());
        let model_dim = self.model.embedder.config().embedding_dim;
        if live.dim != model_dim {
            return Err(PgError::Dimension {
                url,
                table,
                version: live.version,
                index: live.dim,
                model: model_dim,
            });
        }
        if live.fingerprint != self.model.fingerprint {
            return Err(PgError::Stale {
                url,
                table,
                version: live.version,
                index: live.fingerprint.clone(),
                model: self.model.fingerprint.clone(),
            });
        }
        Ok(())
    }

    /// Uses `settings`' shortlist and beam width; with `ef_search` = 0, the beam the
    /// local index measured ([`params_for`]). A gallery in PostgreSQL records no
    /// measured beam: it searches with `settings` as they are (pgvector's
    /// `hnsw.ef_search` = the shortlist unless `ef_search` is set).
    #[must_use]
    pub fn with_settings(mut self, settings: &IndexConfig) -> Self {
        (self.params, self.tuned) = match &self.gallery {
            Gallery::Local(index) => params_for(settings, &index.header),
            Gallery::Postgres(_) => (params_of(settings), None),
        };
        self
    }

    pub fn set_params(&mut self, params: SearchParams) {
        self.params = params;
        self.tuned = None;
    }

    /// The beam `vitrine index` measured, when searches use it (the local index
    /// recorded one and `index.ef_search` is 0).
    pub fn tuned_ef(&self) -> Option<EfChoice> {
        self.tuned
    }

    /// The beam a search for `k` results walks, and where it comes from, in words
    /// (the dashboard's Search tab).
    pub fn beam_label(&self, k: usize) -> String {
        let ef = self.params.resolve(k).1;
        match (&self.gallery, &self.tuned) {
            (Gallery::Postgres(_), _) => format!("pgvector ef {ef}"),
            (Gallery::Local(_), Some(c)) if c.reached => format!(
                "ef {ef} measured for recall@{} {} ({:.4})",
                c.k, c.target, c.recall
            ),
            (Gallery::Local(_), Some(c)) => format!(
                "ef {ef}: the widest measured, recall@{} {:.4} < {}",
                c.k, c.recall, c.target
            ),
            (Gallery::Local(_), None) if self.params.ef > 0 => {
                format!("ef {ef} (index.ef_search)")
            }
            (Gallery::Local(_), None) => format!("ef {ef} (the shortlist; not measured)"),
        }
    }

    pub fn params(&self) -> SearchParams {
        self.params
    }

    pub fn run(&self) -> &Path {
        &self.run
    }

    /// The local index's header (`None` for a gallery in PostgreSQL).
    pub fn header(&self) -> Option<&IndexHeader> {
        match &self.gallery {
            Gallery::Local(index) => Some(&index.header),
            Gallery::Postgres(_) => None,
        }
    }

    /// The PostgreSQL record of the gallery (`None` for the local index).
    pub fn postgres(&self) -> Option<&PgRecord> {
        match &self.gallery {
            Gallery::Local(_) => None,
            Gallery::Postgres(pg) => Some(&pg.1),
        }
    }

    /// Where the gallery lives, in words (URL without password).
    pub fn backend(&self) -> String {
        match &self.gallery {
            Gallery::Local(_) => "in-process HNSW".into(),
            Gallery::Postgres(pg) => {
                format!("PostgreSQL {} at {}", pg.0.table(), pg.0.url().shown())
            }
        }
    }

    pub fn len(&self) -> usize {
        match &self.gallery {
            Gallery::Local(index) => index.entries.len(),
            Gallery::Postgres(pg) => pg.0.live().rows,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        match &self.gallery {
            Gallery::Local(index) => index.header.dim,
            Gallery::Postgres(pg) => pg.1.dim,
        }
    }

    /// The embedder and the run settings it was loaded with.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// The gallery's entries and float vectors (one row per entry); from PostgreSQL
    /// they are read on the first call and kept.
    pub fn rows(&self) -> Result<GalleryView<'_>, SearchError> {
        match &self.gallery {
            Gallery::Local(index) => Ok(GalleryView::Borrowed {
                entries: &index.entries,
                vectors: index.vectors.vectors(),
            }),
            Gallery::Postgres(pg) => Ok(GalleryView::Shared(pg.0.rows(&|live| self.accept(live))?)),
        }
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
        match &self.gallery {
            Gallery::Local(index) => {
                Ok(Self::hits(index, &index.vectors.search(v, k, self.params)))
            }
            Gallery::Postgres(pg) => Ok(pg.0.search(v, k, self.params, &|l| self.accept(l))?),
        }
    }

    /// The exact `k` nearest gallery images of an embedding (full scan; in SQL for a
    /// gallery in PostgreSQL).
    pub fn search_exact(&self, v: &[f32], k: usize) -> Result<Vec<SearchHit>, SearchError> {
        self.check_dim(v)?;
        match &self.gallery {
            Gallery::Local(index) => Ok(Self::hits(index, &index.vectors.exact(v, k))),
            Gallery::Postgres(pg) => Ok(pg.0.exact(v, k, &|l| self.accept(l))?),
        }
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

    fn hits(index: &Index, hits: &[Hit]) -> Vec<SearchHit> {
        hits.iter()
            .enumerate()
            .filter_map(|(r, h)| {
                let e = index.entries.get(h.index)?;
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

/// Search settings of an `[index]` section as they are (`ef_search` = 0: the
/// shortlist).
pub fn params_of(settings: &IndexConfig) -> SearchParams {
    SearchParams {
        shortlist: settings.shortlist,
        ef: settings.ef_search,
        int8: true,
    }
}

/// Search settings of an `[index]` section for a graph whose beam was measured
/// (`measured`, from its header or [`super::tune::choose_ef`]): with `ef_search` = 0
/// the measured beam, the whole of it re-ranked as it was measured unless
/// `shortlist` is set (the beam never below the shortlist nor `k`); the measured
/// choice comes back when it is used. `ef_search` set, or nothing measured (an
/// index from before the measurement): [`params_of`].
pub fn params_with(
    settings: &IndexConfig,
    measured: Option<&EfChoice>,
) -> (SearchParams, Option<EfChoice>) {
    match measured {
        Some(choice) if settings.ef_search == 0 && choice.ef > 0 => (
            SearchParams {
                shortlist: if settings.shortlist == 0 {
                    choice.ef
                } else {
                    settings.shortlist
                },
                ef: choice.ef,
                int8: true,
            },
            Some(*choice),
        ),
        _ => (params_of(settings), None),
    }
}

/// [`params_with`] for the local index of `header`.
pub fn params_for(
    settings: &IndexConfig,
    header: &IndexHeader,
) -> (SearchParams, Option<EfChoice>) {
    params_with(settings, header.graph.search_ef.as_ref())
}
