//! `vitrine eval`: DeepFashion's protocol on a run's checkpoint (or its untrained
//! network). Queries are the test split's consumer images, the gallery the
//! de-duplicated shop images of the protocol's splits; top-k accuracy and MAP@R come
//! from one exact ranking ([`crate::eval`]). For a model, the HNSW + re-rank search
//! is also scored against that exact search on the same queries, on a graph built
//! here with the `[index]` settings (not the run's `RUN/index/`, which may hold
//! another gallery or be missing): a check of the search method on these vectors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::build::{BuildError, embed_to_matrix};
use super::model::{CheckpointChoice, load_model};
use super::npy::Matrix;
use super::postgres::gallery::LiveVersion;
use super::postgres::{PgError, PgGallery, PgUrl, record};
use super::rerank::{VectorIndex, recall_at_k};
use super::search::{params_of, params_with};
use super::store::{SourceRecord, build_graph_with};
use super::tune;
use crate::config::{DataConfig, IndexConfig};
use crate::data::deepfashion::{Dataset, GalleryProtocol, LoadOptions, Split};
use crate::data::loader::{ImageSpec, LoaderConfig, Prefetcher};
use crate::eval::{self, REPORTED_K};
use crate::index::hnsw::GraphParams;
use crate::run::folder::RunDir;

/// The k at which the index is compared with exact search.
pub const INDEX_RECALL_K: usize = 20;

#[derive(Debug, Clone)]
pub struct EvalJob {
    pub run: PathBuf,
    pub data: PathBuf,
    pub protocol: GalleryProtocol,
    /// `None`: the untrained network (seeded with the run's `train.seed`).
    pub checkpoint: Option<CheckpointChoice>,
    /// Instead of a model, the pixels themselves at this side (ImageNet-normalised,
    /// as the network sees them) as the embedding: the floor any model must beat.
    /// The run is not read.
    pub raw_pixels: Option<u32>,
    pub settings: IndexConfig,
    pub loader: DataConfig,
    /// Also score each small category.
    pub by_category: bool,
    /// Also list this many of the worst queries (0: none).
    pub failures: usize,
}

/// Top-1 and top-20 accuracy of one small category's queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryScore {
    /// `BIG/Small`.
    pub category: String,
    pub queries: usize,
    pub top1: f64,
    pub top20: f64,
}

/// A gallery image in a failure listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureHit {
    pub path: String,
    pub item_id: String,
    pub score: f32,
}

/// A query whose item ranks low: what it is, where its item's best shop image
/// landed, and the images ranked ahead of it (at most [`FAILURE_SHOWN`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub query: String,
    pub item_id: String,
    pub category: String,
    /// 1-based rank of the item's best shop image.
    pub rank: usize,
    pub true_image: FailureHit,
    pub beaten_by: Vec<FailureHit>,
}

/// Images shown ahead of a failing query's true item.
pub const FAILURE_SHOWN: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub protocol: String,
    pub queries: usize,
    pub gallery: usize,
    /// `"1"`, `"5"`, `"10"`, `"20"`, `"50"` → share of queries whose item is among the
    /// first k.
    pub top_k: BTreeMap<String, f64>,
    pub map_at_r: f64,
    /// Mean share of the exact top-20 that the HNSW + re-rank search returns; `None`
    /// (null) for raw pixels, which nothing searches.
    pub index_recall_at_k: Option<f64>,
    /// Top-k accuracy (k up to 20) of the index's own results: what `search` would
    /// find for these queries.
    pub index_top_k: Option<BTreeMap<String, f64>>,
    /// The index measured: `in-process HNSW` (a graph built on this gallery for this
    /// evaluation), or the run's gallery in PostgreSQL when RUN/index/ holds this
    /// gallery with these weights.
    pub index_backend: Option<String>,
    /// The beam the in-process search check walked: measured on this gallery as
    /// `vitrine index` measures it ([`super::tune`]) unless `index.ef_search` is
    /// set; `None` for a gallery in PostgreSQL and for raw pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_ef: Option<usize>,
    /// The checkpoint file, or `untrained`.
    pub model: String,
    pub fingerprint: String,
    /// Images that could not be read (skipped).
    pub unreadable: usize,
    /// Queries whose item has no gallery image (counted as misses).
    pub without_match: usize,
    /// Per small category, worst top-20 first (`--by-category`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_category: Option<Vec<CategoryScore>>,
    /// The worst queries, lowest-ranked true item first (`--failures N`); queries
    /// whose item has no gallery image are not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<Vec<Failure>>,
}

/// Embeds queries and gallery and scores them.
pub fn evaluate(
    job: &EvalJob,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<EvalReport, BuildError> {
    let ds = Dataset::open(
        &job.data,
        LoadOptions {
            strict: job.loader.strict,
            skip_file_check: false,
        },
    )?;
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    let queries = ds.queries(Split::Test);
    let gallery = ds.gallery(job.protocol);
    if gallery.is_empty() {
        return Err(BuildError::Empty(format!(
            "{} has no shop images in the {} split(s)",
            job.data.display(),
            job.protocol
        )));
    }
    if queries.is_empty() {
        return Err(BuildError::Empty(format!(
            "{} has no consumer images in the test split (no queries)",
            job.data.display()
        )));
    }
    let model = match job.raw_pixels {
        Some(_) => None,
        None => Some(load_model(&job.run, job.checkpoint.as_ref())?),
    };
    let loader = LoaderConfig {
        size: model
            .as_ref()
            .map_or(job.raw_pixels.unwrap_or(64), |m| m.config.model.image_size),
        crop: job.loader.crop,
        workers: job.loader.workers,
        prefetch: job.loader.prefetch,
        max_pixels: job.loader.max_image_pixels,
    };
    let specs = |imgs: &[usize]| imgs.iter().map(|&i| ds.spec(i)).collect::<Vec<_>>();
    let mut embed = |what: &str, imgs: &[usize]| match &model {
        Some(m) => embed_to_matrix(m, &specs(imgs), loader, job.settings.batch, &mut |d, t| {
            progress(what, d, t);
        }),
        None => pixels_to_matrix(&specs(imgs), loader, job.settings.batch, &mut |d, t| {
            progress(what, d, t);
        }),
    };
    let (qv, q_kept, q_bad) = embed("queries", &queries)?;
    let (gv, g_kept, g_bad) = embed("gallery", &gallery)?;
    if gv.rows == 0 || qv.rows == 0 {
        return Err(BuildError::Empty(
            "no query or gallery image could be read".into(),
        ));
    }
    let q_items: Vec<usize> = q_kept.iter().map(|&k| ds.images[queries[k]].item).collect();
    let g_items: Vec<usize> = g_kept.iter().map(|&k| ds.images[gallery[k]].item).collect();
    let dev = candle_core::Device::Cpu;
    let qt = candle_core::Tensor::from_slice(&qv.data, (qv.rows, qv.cols), &dev)?;
    let gt = candle_core::Tensor::from_slice(&gv.data, (gv.rows, gv.cols), &dev)?;
    let retrieval = eval::evaluate(&qt, &gt, &q_items, &g_items, &REPORTED_K)?;
    let (by_category, failures) = if job.by_category || job.failures > 0 {
        let outcomes = eval::query_outcomes(&qt, &gt, &q_items, &g_items, FAILURE_SHOWN)?;
        let q_images: Vec<usize> = q_kept.iter().map(|&k| queries[k]).collect();
        let g_images: Vec<usize> = g_kept.iter().map(|&k| gallery[k]).collect();
        let categories: Vec<String> = q_images.iter().map(|&q| category_name(&ds, q)).collect();
        (
            job.by_category
                .then(|| category_scores(&categories, &outcomes)),
            (job.failures > 0)
                .then(|| worst_queries(&ds, &q_images, &g_images, &outcomes, job.failures)),
        )
    } else {
        (None, None)
    };
    // Raw pixels are never searched: no index to check.
    let index = if model.is_some() {
        let exact: Vec<Vec<usize>> = eval::exact_top_k(&qt, &gt, INDEX_RECALL_K)?
            .into_iter()
            .map(|hits| hits.into_iter().map(|h| h.index).collect())
            .collect();
        // The index: the run's gallery in PostgreSQL when it is this one, else a graph
        // built on this gallery; searched with these queries.
        let fingerprint = model.as_ref().map(|m| m.fingerprint.as_str());
        let g_paths: Vec<String> = g_kept
            .iter()
            .map(|&k| {
                crate::fsutil::absolute(&ds.spec(gallery[k]).path)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let (approx, index_backend, index_ef) =
            if let Some(pg) = postgres_gallery(job, fingerprint, gv.cols)? {
                // PostgreSQL records no measured beam: its settings as they are.
                let backend = format!("PostgreSQL {} at {}", pg.table(), pg.url().shown());
                let fingerprint = fingerprint.unwrap_or_default();
                (
                    search_postgres(&pg, &qv, &g_paths, &job.settings, fingerprint)?,
                    backend,
                    None,
                )
            } else {
                let params = GraphParams {
                    m: job.settings.m,
                    ef_construction: job.settings.ef_construction,
                };
                let built = build_graph_with(&gv, params, 64, job.settings.builder)?;
                let index = VectorIndex::new(gv, built.graph);
                // The beam `search` would use on an index of this gallery.
                let measured = if job.settings.ef_search == 0 {
                    Some(tune::choose_ef(
                        &index,
                        tune::RECALL_K,
                        job.settings.target_recall,
                        tune::SAMPLE,
                        &mut |d, t| progress("recall", d, t),
                    )?)
                } else {
                    None
                };
                let (search, _) = params_with(&job.settings, measured.as_ref());
                let approx = qv
                    .iter_rows()
                    .map(|q| {
                        index
                            .search(q, INDEX_RECALL_K, search)
                            .iter()
                            .map(|h| h.index)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let ef = search.resolve(INDEX_RECALL_K).1;
                (approx, "in-process HNSW".to_string(), Some(ef))
            };
        let index_top_k: BTreeMap<String, f64> = REPORTED_K
            .iter()
            .filter(|&&k| k <= INDEX_RECALL_K)
            .map(|&k| {
                let found = approx
                    .iter()
                    .zip(&q_items)
                    .filter(|(hits, item)| {
                        hits.iter().take(k).any(|&g| g_items.get(g) == Some(item))
                    })
                    .count();
                (k.to_string(), found as f64 / approx.len().max(1) as f64)
            })
            .collect();
        Some((
            recall_at_k(&approx, &exact, INDEX_RECALL_K),
            index_top_k,
            index_backend,
            index_ef,
        ))
    } else {
        None
    };
    Ok(EvalReport {
        protocol: job.protocol.name().into(),
        queries: retrieval.queries,
        gallery: retrieval.gallery,
        top_k: retrieval
            .top_k
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        map_at_r: retrieval.map_at_r,
        index_recall_at_k: index.as_ref().map(|i| i.0),
        index_top_k: index.as_ref().map(|i| i.1.clone()),
        index_backend: index.as_ref().map(|i| i.2.clone()),
        index_ef: index.and_then(|i| i.3),
        model: match &model {
            Some(m) => m
                .checkpoint
                .as_deref()
                .map_or_else(|| "untrained".into(), |p| p.display().to_string()),
            None => format!("raw pixels at {} px", loader.size),
        },
        fingerprint: model.map(|m| m.fingerprint).unwrap_or_default(),
        unreadable: q_bad + g_bad,
        without_match: retrieval.without_match,
        by_category,
        failures,
    })
}

/// The run's gallery in PostgreSQL, when `RUN/index/` records one embedded from this
/// job's dataset and protocol with these weights (`fingerprint`); `None` otherwise
/// (the in-process index is measured instead).
fn postgres_gallery(
    job: &EvalJob,
    fingerprint: Option<&str>,
    dim: usize,
) -> Result<Option<PgGallery>, BuildError> {
    let Some(fingerprint) = fingerprint else {
        return Ok(None);
    };
    let dir = RunDir::new(&job.run).index_dir();
    let Some(record) = record::read(&dir)? else {
        return Ok(None);
    };
    let this = SourceRecord::Dataset {
        root: crate::fsutil::absolute(&job.data)
            .to_string_lossy()
            .into_owned(),
        protocol: job.protocol.name().into(),
    };
    if record.fingerprint != fingerprint || record.dim != dim || record.sources != [this] {
        tracing::info!(
            "{}: another gallery or other weights than this evaluation's; measuring an in-process index instead",
            dir.join(record::RECORD_FILE).display()
        );
        return Ok(None);
    }
    let what = dir.join(record::RECORD_FILE).display().to_string();
    let url = PgUrl::resolve(&record.url, &what)?;
    let pg = PgGallery::open(url, &record)?;
    check_live(&pg, &pg.live(), fingerprint, dim)?;
    Ok(Some(pg))
}

/// Whether `live` (a version of `pg`) holds vectors of these weights.
fn check_live(
    pg: &PgGallery,
    live: &LiveVersion,
    fingerprint: &str,
    dim: usize,
) -> Result<(), PgError> {
    if live.fingerprint != fingerprint || live.dim != dim {
        return Err(PgError::Stale {
            url: pg.url().shown(),
            table: pg.table().to_string(),
            version: live.version,
            index: live.fingerprint.clone(),
            model: fingerprint.to_string(),
        });
    }
    Ok(())
}

/// Each query through PostgreSQL (HNSW shortlist + exact re-rank), its hits as
/// positions in this evaluation's gallery (`usize::MAX` for a row it lacks).
fn search_postgres(
    pg: &PgGallery,
    queries: &Matrix,
    g_paths: &[String],
    settings: &IndexConfig,
    fingerprint: &str,
) -> Result<Vec<Vec<usize>>, PgError> {
    let position: std::collections::HashMap<&str, usize> = g_paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let dim = queries.cols;
    let accept = |l: &LiveVersion| check_live(pg, l, fingerprint, dim);
    queries
        .iter_rows()
        .map(|q| {
            let hits = pg.search(q, INDEX_RECALL_K, params_of(settings), &accept)?;
            Ok(hits
                .iter()
                .map(|h| position.get(h.path.as_str()).copied().unwrap_or(usize::MAX))
                .collect())
        })
        .collect()
}

fn category_name(ds: &Dataset, image: usize) -> String {
    let c = ds.category_of_image(image);
    format!("{}/{}", c.big, c.small)
}

/// Top-1/top-20 per small category of the queries (`categories[i]` is query `i`'s,
/// `BIG/Small`), worst top-20 (then top-1) first. `vitrine eval --by-category` and the
/// dashboard's failures view both report this.
pub fn category_scores(
    categories: &[String],
    outcomes: &[eval::QueryOutcome],
) -> Vec<CategoryScore> {
    let mut per: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (category, o) in categories.iter().zip(outcomes) {
        let e = per.entry(category.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(o.rank.is_some_and(|r| r <= 1));
        e.2 += usize::from(o.rank.is_some_and(|r| r <= 20));
    }
    let mut scores: Vec<CategoryScore> = per
        .into_iter()
        .map(|(category, (n, t1, t20))| CategoryScore {
            category: category.to_string(),
            queries: n,
            top1: t1 as f64 / n as f64,
            top20: t20 as f64 / n as f64,
        })
        .collect();
    scores.sort_by(|a, b| {
        a.top20
            .total_cmp(&b.top20)
            .then(a.top1.total_cmp(&b.top1))
            .then_with(|| a.category.cmp(&b.category))
    });
    scores
}

/// Query positions, worst first: queries whose item has no gallery image, then by
/// falling rank of the item's best gallery image; ties keep the listing order.
/// `vitrine eval --failures` lists the start of this order (ranks above 1), the
/// dashboard's failures view all of it.
pub fn worst_first(outcomes: &[eval::QueryOutcome]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..outcomes.len()).collect();
    order.sort_by_key(|&q| outcomes[q].rank.map(std::cmp::Reverse));
    order
}

/// The `n` queries whose item ranks lowest (ties: listing order).
fn worst_queries(
    ds: &Dataset,
    queries: &[usize],
    gallery: &[usize],
    outcomes: &[eval::QueryOutcome],
    n: usize,
) -> Vec<Failure> {
    let hit = |h: &eval::Hit| {
        let image = gallery[h.index];
        FailureHit {
            path: ds.image_path(image).display().to_string(),
            item_id: ds.items[ds.images[image].item].id.clone(),
            score: h.score,
        }
    };
    worst_first(outcomes)
        .into_iter()
        .map(|i| (queries[i], &outcomes[i]))
        .filter(|(_, o)| o.rank.is_some_and(|r| r > 1))
        .take(n)
        .filter_map(|(q, o)| {
            let (rank, t) = (o.rank?, o.true_hit?);
            Some(Failure {
                query: ds.image_path(q).display().to_string(),
                item_id: ds.items[ds.images[q].item].id.clone(),
                category: category_name(ds, q),
                rank,
                true_image: hit(&t),
                beaten_by: o.top.iter().take(rank - 1).map(hit).collect(),
            })
        })
        .collect()
}

/// Unit rows of the loader's normalised pixels (`3·size²` dims), for the raw-pixel
/// baseline: `(matrix, kept indices, unreadable count)`.
fn pixels_to_matrix(
    specs: &[ImageSpec],
    loader: LoaderConfig,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Matrix, Vec<usize>, usize), BuildError> {
    let batch = batch.max(1);
    let dim = 3 * (loader.size as usize).pow(2);
    let groups = specs
        .chunks(batch)
        .map(|c| c.iter().map(|s| vec![s.clone()]).collect())
        .collect();
    let (mut data, mut kept, mut bad, mut done) = (Vec::new(), Vec::new(), 0, 0);
    let load_err = |e| BuildError::Embed(crate::model::embed_files::EmbedError::Load(e));
    let mut prefetcher = Prefetcher::spawn(groups, loader).map_err(load_err)?;
    for (b, loaded) in prefetcher.by_ref().enumerate() {
        done += loaded.kept.len() + loaded.failed.len();
        kept.extend(loaded.kept.iter().map(|k| b * batch + k));
        for f in &loaded.failed {
            tracing::warn!("{f}");
        }
        bad += loaded.failed.len();
        for row in loaded.data.chunks_exact(dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            data.extend(row.iter().map(|v| v / norm));
        }
        progress(done, specs.len());
    }
    prefetcher.finish().map_err(load_err)?;
    let rows = kept.len();
    let m = Matrix::new(rows, dim, data).ok_or_else(|| {
        BuildError::Candle(candle_core::Error::Msg(format!(
            "pixel rows are not {rows} × {dim}"
        )))
    })?;
    Ok((m, kept, bad))
}
