//! Indexing jobs: embed a gallery with a run's checkpoint, build the HNSW graph,
//! write `RUN/index/` (see [`super::store`]); or append images to an existing index.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use super::hnsw::{self, Graph, GraphParams};
use super::hnsw_dump;
use super::hnsw_insert;
use super::model::{CheckpointChoice, LoadedModel, ModelError, load_model};
use super::npy::Matrix;
use super::rerank::VectorIndex;
use super::store::{self, Entry, GraphRecord, IndexError, IndexHeader, SourceRecord};
use super::tune::{self, EfChoice};
use crate::config::{DataConfig, IndexConfig};
use crate::data::deepfashion::{Dataset, DatasetError, GalleryProtocol, LoadOptions};
use crate::data::folder::scan_images;
use crate::data::loader::{ImageSpec, LoaderConfig};
use crate::fsutil::absolute;
use crate::model::embed_files::{EmbedError, embed_images};
use crate::run::folder::RunDir;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Graph(#[from] super::hnsw::GraphError),
    #[error("cannot scan {}: {source}", dir.display())]
    Scan {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the gallery is empty: {0}")]
    Empty(String),
    #[error(
        "the embedding of {0} is not finite (NaN or infinite values): the checkpoint's weights are damaged"
    )]
    NotFinite(String),
    #[error("{} was built with other weights or embedding settings (fingerprint {index}) than {checkpoint} ({model}); rebuild it with `vitrine index --run {}` instead of --add", dir.display(), run.display())]
    Stale {
        dir: PathBuf,
        run: PathBuf,
        index: String,
        model: String,
        checkpoint: String,
    },
    #[error("model error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Postgres(#[from] super::postgres::PgError),
}

/// What to index.
#[derive(Debug, Clone, PartialEq)]
pub enum Gallery {
    /// The de-duplicated shop images of a dataset's gallery protocol.
    Dataset {
        root: PathBuf,
        protocol: GalleryProtocol,
    },
    /// Every image under a folder tree.
    Folder(PathBuf),
}

/// An indexing job over a run.
#[derive(Debug, Clone)]
pub struct IndexJob {
    pub run: PathBuf,
    pub checkpoint: CheckpointChoice,
    pub gallery: Gallery,
    pub settings: IndexConfig,
    /// Loader settings (crop, workers, prefetch, strict); the image size is the run's.
    pub data: DataConfig,
}

/// What a job did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IndexReport {
    pub dir: PathBuf,
    /// Rows in the index now.
    pub count: usize,
    /// Rows this job embedded and added.
    pub added: usize,
    /// Images already in the index (`--add`), not embedded again.
    pub already_indexed: usize,
    /// Images that could not be read (skipped).
    pub unreadable: usize,
    pub dim: usize,
    pub embed_seconds: f64,
    pub graph_seconds: f64,
    pub self_recall: f64,
    /// The search beam measured for `index.target_recall` ([`tune::choose_ef`]);
    /// `None` when the graph could not be read back after `--add`, or `--add` found
    /// nothing new for an index written before the measurement existed.
    pub search_ef: Option<EfChoice>,
    /// Seconds the beam's measurement took.
    pub tune_seconds: f64,
    pub fingerprint: String,
    /// The checkpoint file the vectors were embedded with.
    pub checkpoint: String,
    pub source: SourceRecord,
}

/// The images of a gallery with their entries (ids still to assign).
pub(crate) fn collect(
    gallery: &Gallery,
    data: &DataConfig,
) -> Result<(Vec<ImageSpec>, Vec<Entry>, SourceRecord), BuildError> {
    match gallery {
        Gallery::Dataset { root, protocol } => {
            let ds = Dataset::open(
                root,
                LoadOptions {
                    strict: data.strict,
                    skip_file_check: false,
                },
            )?;
            for w in &ds.warnings {
                tracing::warn!("{w}");
            }
            let images = ds.gallery(*protocol);
            if images.is_empty() {
                return Err(BuildError::Empty(format!(
                    "{} has no shop images in the {protocol} split(s)",
                    root.display()
                )));
            }
            let mut specs = Vec::with_capacity(images.len());
            let mut entries = Vec::with_capacity(images.len());
            for &i in &images {
                let mut spec = ds.spec(i);
                spec.path = absolute(&spec.path);
                let item = &ds.items[ds.images[i].item];
                let cat = &ds.categories[item.category];
                entries.push(Entry {
                    id: 0,
                    path: spec.path.to_string_lossy().into_owned(),
                    item_id: item.id.clone(),
                    category: format!("{}/{}", cat.big, cat.small),
                });
                specs.push(spec);
            }
            Ok((
                specs,
                entries,
                SourceRecord::Dataset {
                    root: absolute(root).to_string_lossy().into_owned(),
                    protocol: protocol.name().into(),
                },
            ))
        }
        Gallery::Folder(dir) => {
            let paths = scan_images(dir).map_err(|source| BuildError::Scan {
                dir: dir.clone(),
                source,
            })?;
            let mut specs = Vec::with_capacity(paths.len());
            let mut entries = Vec::with_capacity(paths.len());
            for p in paths {
                let p = absolute(&p);
                let item_id = p
                    .parent()
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                entries.push(Entry {
                    id: 0,
                    path: p.to_string_lossy().into_owned(),
                    item_id,
                    category: String::new(),
                });
                specs.push(ImageSpec {
                    path: p,
                    bbox: None,
                });
            }
            Ok((
                specs,
                entries,
                SourceRecord::Folder {
                    root: absolute(dir).to_string_lossy().into_owned(),
                },
            ))
        }
    }
}

pub(crate) fn loader_config(model: &LoadedModel, data: &DataConfig) -> LoaderConfig {
    LoaderConfig {
        size: model.config.model.image_size,
        crop: data.crop,
        workers: data.workers,
        prefetch: data.prefetch,
        max_pixels: data.max_image_pixels,
    }
}

/// Embeds `specs`; returns the unit rows (CPU) and the indices of the readable specs.
pub fn embed_to_matrix(
    model: &LoadedModel,
    specs: &[ImageSpec],
    loader: LoaderConfig,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Matrix, Vec<usize>, usize), BuildError> {
    let dim = model.embedder.config().embedding_dim;
    let out = embed_images(
        &model.embedder,
        specs,
        loader,
        batch,
        &model.device,
        progress,
    )?;
    for f in &out.failed {
        tracing::warn!("{f}");
    }
    let data = out
        .vectors
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // A damaged checkpoint embeds NaN; such rows would poison the graph and rankings.
    if let Some(row) = data
        .chunks(dim.max(1))
        .position(|r| !r.iter().all(|x| x.is_finite()))
    {
        return Err(BuildError::NotFinite(
            specs[out.kept[row]].path.display().to_string(),
        ));
    }
    let rows = out.kept.len();
    let m = Matrix::new(rows, dim, data).ok_or_else(|| {
        BuildError::Candle(candle_core::Error::Msg(format!(
            "embeddings are not {rows} × {dim}"
        )))
    })?;
    Ok((m, out.kept, out.failed.len()))
}

fn params(settings: &IndexConfig) -> GraphParams {
    GraphParams {
        m: settings.m,
        ef_construction: settings.ef_construction,
    }
}

/// The beam used to check self-recall after a build.
fn ef_check(settings: &IndexConfig) -> usize {
    settings.ef_search.max(settings.shortlist).max(64)
}

pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The smallest beam reaching `settings.target_recall` on `vectors` searched
/// through `graph` (see [`tune`]).
fn measure_ef(
    vectors: &Matrix,
    graph: Graph,
    settings: &IndexConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EfChoice, BuildError> {
    let index = VectorIndex::new(vectors.clone(), graph);
    let choice = tune::choose_ef(
        &index,
        tune::RECALL_K,
        settings.target_recall,
        tune::SAMPLE,
        progress,
    )?;
    tracing::info!(
        "search beam: ef {} gives recall@{} {:.4} on {} gallery vectors (target {})",
        choice.ef,
        choice.k,
        choice.recall,
        choice.sample,
        choice.target
    );
    Ok(choice)
}

/// Embeds the job's gallery and writes a new `RUN/index/` (replacing any previous).
pub fn build(
    job: &IndexJob,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<IndexReport, BuildError> {
    build_reporting(job, progress, &mut |_, _| {})
}

/// [`build`], reporting the embedding to `progress` and the measurement of the
/// search beam to `measure`.
pub fn build_reporting(
    job: &IndexJob,
    progress: &mut dyn FnMut(usize, usize),
    measure: &mut dyn FnMut(usize, usize),
) -> Result<IndexReport, BuildError> {
    let _lock = store::lock(&RunDir::new(&job.run).index_dir())?;
    let model = load_model(&job.run, Some(&job.checkpoint))?;
    let (specs, entries, source) = collect(&job.gallery, &job.data)?;
    if specs.is_empty() {
        return Err(BuildError::Empty(format!("{source:?} has no images")));
    }
    let t0 = Instant::now();
    let loader = loader_config(&model, &job.data);
    let (vectors, kept, unreadable) =
        embed_to_matrix(&model, &specs, loader, job.settings.batch, progress)?;
    if vectors.rows == 0 {
        return Err(BuildError::Empty(format!(
            "none of the {} images could be read",
            specs.len()
        )));
    }
    let entries: Vec<Entry> = kept
        .iter()
        .enumerate()
        .map(|(id, &k)| Entry {
            id,
            ..entries[k].clone()
        })
        .collect();
    let embed_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let built = store::build_graph_with(
        &vectors,
        params(&job.settings),
        ef_check(&job.settings),
        job.settings.builder,
    )?;
    let self_recall = built.self_recall;
    let graph_seconds = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let search_ef = measure_ef(&vectors, built.graph.clone(), &job.settings, measure)?;
    let tune_seconds = t2.elapsed().as_secs_f64();
    let header = IndexHeader {
        format: store::FORMAT,
        dim: vectors.cols,
        count: vectors.rows,
        distance: store::DISTANCE.into(),
        fingerprint: model.fingerprint.clone(),
        checkpoint: model
            .checkpoint
            .as_deref()
            .map(|p| absolute(p).to_string_lossy().into_owned())
            .unwrap_or_default(),
        backbone: model.config.model.backbone.to_string(),
        image_size: model.config.model.image_size,
        sources: vec![source.clone()],
        graph: GraphRecord {
            basename: store::GRAPH_BASENAME.into(),
            m: job.settings.m,
            ef_construction: job.settings.ef_construction,
            self_recall,
            search_ef: Some(search_ef),
        },
        files: std::collections::BTreeMap::default(),
        created: now(),
    };
    let dir = RunDir::new(&job.run).index_dir();
    let header = store::write(
        &dir,
        header,
        &entries,
        &vectors,
        built.source(params(&job.settings)),
    )?;
    Ok(IndexReport {
        dir,
        count: header.count,
        added: header.count,
        already_indexed: 0,
        unreadable,
        dim: header.dim,
        embed_seconds,
        graph_seconds,
        self_recall,
        search_ef: header.graph.search_ef,
        tune_seconds,
        fingerprint: header.fingerprint,
        checkpoint: header.checkpoint,
        source,
    })
}

/// Appends the images under `folder` that the index does not hold yet, inserting them
/// into the existing graph (no rebuild), and measures the search beam again. The
/// checkpoint must be the one the index was built with.
pub fn add(
    run: &Path,
    checkpoint: &CheckpointChoice,
    folder: &Path,
    settings: &IndexConfig,
    data: &DataConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<IndexReport, BuildError> {
    add_reporting(
        run,
        checkpoint,
        folder,
        settings,
        data,
        progress,
        &mut |_, _| {},
    )
}

/// [`add`], reporting the embedding to `progress` and the measurement of the search
/// beam to `measure`.
pub fn add_reporting(
    run: &Path,
    checkpoint: &CheckpointChoice,
    folder: &Path,
    settings: &IndexConfig,
    data: &DataConfig,
    progress: &mut dyn FnMut(usize, usize),
    measure: &mut dyn FnMut(usize, usize),
) -> Result<IndexReport, BuildError> {
    let dir = RunDir::new(run).index_dir();
    // Held from reading the old index to writing the new one: no lost update.
    let _lock = store::lock(&dir)?;
    let old_header = store::read_header(&dir)?;
    let model = load_model(run, Some(checkpoint))?;
    if model.fingerprint != old_header.fingerprint {
        return Err(BuildError::Stale {
            dir,
            run: run.to_path_buf(),
            index: old_header.fingerprint,
            model: model.fingerprint,
            checkpoint: model
                .checkpoint
                .as_deref()
                .map_or_else(|| checkpoint.to_string(), |p| p.display().to_string()),
        });
    }
    let old = store::load(&dir)?;
    let (specs, entries, source) = collect(&Gallery::Folder(folder.to_path_buf()), data)?;
    let known: HashSet<&str> = old.entries.iter().map(|e| e.path.as_str()).collect();
    let fresh: Vec<usize> = (0..specs.len())
        .filter(|&i| !known.contains(entries[i].path.as_str()))
        .collect();
    let already_indexed = specs.len() - fresh.len();
    let fresh_specs: Vec<ImageSpec> = fresh.iter().map(|&i| specs[i].clone()).collect();
    let t0 = Instant::now();
    let loader = loader_config(&model, data);
    let (new_vectors, kept, unreadable) =
        embed_to_matrix(&model, &fresh_specs, loader, settings.batch, progress)?;
    let embed_seconds = t0.elapsed().as_secs_f64();
    let base = old.header.count;
    if new_vectors.rows == 0 {
        return Ok(IndexReport {
            dir,
            count: base,
            added: 0,
            already_indexed,
            unreadable,
            dim: old.header.dim,
            embed_seconds,
            graph_seconds: 0.0,
            self_recall: old.header.graph.self_recall,
            search_ef: old.header.graph.search_ef,
            tune_seconds: 0.0,
            fingerprint: old.header.fingerprint,
            checkpoint: old.header.checkpoint,
            source,
        });
    }
    let mut all = old.vectors.vectors().clone();
    all.data.extend_from_slice(&new_vectors.data);
    all.rows += new_vectors.rows;
    let mut all_entries = old.entries.clone();
    all_entries.extend(kept.iter().enumerate().map(|(j, &k)| Entry {
        id: base + j,
        ..entries[fresh[k]].clone()
    }));
    let mut header = old.header.clone();
    header.sources.push(source.clone());
    header.created = now();
    let read_dir = store::readable_dir(&dir);
    let t1 = Instant::now();
    let expected = hnsw_dump::Expected {
        count: old.header.count,
        dim: old.header.dim,
    };
    let mut tune_seconds = 0.0;
    let written = hnsw::with_loaded(&read_dir, &old.header.graph.basename, expected, |index| {
        hnsw::insert_rows(index, &new_vectors.data, new_vectors.cols, base, true);
        // hnsw_rs's inserts leave rows that no search reaches, as the build's do:
        // the graph is filed with them linked back.
        let ef_construction = index.get_ef_construction();
        let inserted = Graph::from_hnsw(index).ok();
        let repaired = inserted.as_ref().and_then(|g| {
            match hnsw_insert::reconnect(g, &all.data, all.cols, ef_construction) {
                Ok((g, linked)) => {
                    if linked > 0 {
                        tracing::info!(
                            "index --add: linked back {linked} node(s) that no search reached"
                        );
                    }
                    Some(g)
                }
                Err(e) => {
                    tracing::warn!("index --add: {e}; the graph is filed as hnsw_rs left it");
                    None
                }
            }
        });
        let graph = repaired.as_ref().or(inserted.as_ref());
        header.graph.self_recall = graph.map_or(0.0, |g| {
            hnsw::self_recall(g, &all.data, all.cols, 1000, ef_check(settings))
        });
        // The graph grew: the beam is measured again (none recorded, so searches
        // fall back to the shortlist, if the graph cannot be read back).
        let t2 = Instant::now();
        header.graph.search_ef = graph
            .map(|g| measure_ef(&all, g.clone(), settings, measure))
            .transpose()?;
        tune_seconds = t2.elapsed().as_secs_f64();
        let source = match &repaired {
            Some(graph) => store::GraphSource::Vitrine {
                graph,
                ef_construction,
            },
            None => index.into(),
        };
        Ok::<_, BuildError>(store::write(
            &dir,
            header.clone(),
            &all_entries,
            &all,
            source,
        )?)
    })??;
    let graph_seconds = t1.elapsed().as_secs_f64() - tune_seconds;
    Ok(IndexReport {
        dir,
        count: written.count,
        added: new_vectors.rows,
        already_indexed,
        unreadable,
        dim: written.dim,
        embed_seconds,
        graph_seconds,
        self_recall: written.graph.self_recall,
        search_ef: written.graph.search_ef,
        tune_seconds,
        fingerprint: written.fingerprint,
        checkpoint: written.checkpoint,
        source,
    })
}
