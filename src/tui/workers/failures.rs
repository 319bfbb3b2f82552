//! The failures view's computation: every test query embedded with the search
//! worker's model (the one the index was built with, already in memory) and ranked
//! exactly against the index's gallery vectors — `vitrine eval`'s own
//! [`crate::eval::query_outcomes`], [`worst_first`] and [`category_scores`], so the
//! view lists what `eval --failures` and `--by-category` report.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::{Outbox, spawn};
use crate::config::DataConfig;
use crate::data::loader::{ImageSpec, LoaderConfig};
use crate::eval::{self, Hit};
use crate::index::Searcher;
use crate::index::build::embed_to_matrix;
use crate::index::evaluate::{FAILURE_SHOWN, category_scores, worst_first};
use crate::tui::app::WorkerEvent;
use crate::tui::tabs::dataset::ImageInfo;
use crate::tui::tabs::failures::{FailureRow, FailuresReport, FailuresUpdate, GalleryHit};

/// Batches embedded between two looks at the cancel flag.
const BATCHES_PER_CHUNK: usize = 8;

/// One request of the failures view.
#[derive(Debug, Clone)]
pub struct FailuresJob {
    pub token: u64,
    /// The test queries (the dataset worker's, in the dataset's order).
    pub queries: Vec<ImageInfo>,
    /// Loader settings (crop, workers), as the index was built with.
    pub data: DataConfig,
    /// Images per forward pass (`index.batch`, as `eval` and the index use).
    pub batch: usize,
}

/// Runs `job` on its own thread with `searcher`'s model and index, reporting
/// progress and the result as [`WorkerEvent::Failures`]; stops quietly once `cancel`
/// is set (a newer request took its place).
pub fn spawn_failures(
    searcher: Arc<Searcher>,
    job: FailuresJob,
    cancel: Arc<AtomicBool>,
    out: Outbox,
) {
    let token = job.token;
    let failed = move |m| WorkerEvent::Failures {
        token,
        update: FailuresUpdate::Done(Err(m)),
    };
    spawn("failures", &out.clone(), failed, move || {
        let mut last_sent = Instant::now();
        let mut progress = |done: usize, total: usize| {
            if last_sent.elapsed() >= Duration::from_millis(100) {
                last_sent = Instant::now();
                let sent = out.send(WorkerEvent::Failures {
                    token,
                    update: FailuresUpdate::Progress { done, total },
                });
                // The UI is gone or shows another run: nobody waits for the answer.
                if !sent {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        };
        let result = rank_queries(
            &searcher,
            &job.queries,
            &job.data,
            job.batch,
            &cancel,
            &mut progress,
        );
        match result {
            Ok(None) => tracing::debug!("failures request {token} cancelled"),
            Ok(Some(report)) => {
                tracing::info!(
                    "failures: {} queries ranked in {:.1} s",
                    report.rows.len(),
                    report.seconds
                );
                out.send(WorkerEvent::Failures {
                    token,
                    update: FailuresUpdate::Done(Ok(report)),
                });
            }
            Err(e) => {
                tracing::warn!("failures: {e}");
                out.send(WorkerEvent::Failures {
                    token,
                    update: FailuresUpdate::Done(Err(e)),
                });
            }
        }
    });
}

/// Every readable query, worst first, with the images ranked ahead of its item and
/// the per-category scores; `None` when cancelled.
pub fn rank_queries(
    searcher: &Searcher,
    queries: &[ImageInfo],
    data: &DataConfig,
    batch: usize,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Option<FailuresReport>, String> {
    let started = Instant::now();
    let model = searcher.model();
    let loader = LoaderConfig {
        size: model.config.model.image_size,
        crop: data.crop,
        workers: data.workers,
        prefetch: data.prefetch,
        max_pixels: data.max_image_pixels,
    };
    let specs: Vec<ImageSpec> = queries
        .iter()
        .map(|q| ImageSpec {
            path: q.path.clone(),
            bbox: q.bbox,
        })
        .collect();
    // Chunks of whole batches: every batch is the one `eval` embeds, so the vectors
    // (and the ranking) are the same.
    let batch = batch.max(1);
    let chunk = batch * BATCHES_PER_CHUNK;
    let total = specs.len();
    let (mut vectors, mut kept, mut unreadable) = (Vec::new(), Vec::new(), 0);
    for (c, part) in specs.chunks(chunk).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let base = c * chunk;
        let (m, k, bad) = embed_to_matrix(model, part, loader, batch, &mut |done, _| {
            progress(base + done, total);
        })
        .map_err(|e| e.to_string())?;
        vectors.extend_from_slice(&m.data);
        kept.extend(k.into_iter().map(|i| base + i));
        unreadable += bad;
    }
    if cancel.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // From memory, or read from PostgreSQL once (kept by the searcher).
    let rows = searcher.rows().map_err(|e| e.to_string())?;
    let (entries, gallery) = (rows.entries(), rows.vectors());
    // Item ids as labels (an item of the queries only gets one the gallery lacks).
    let kept_queries: Vec<&ImageInfo> = kept.iter().map(|&i| &queries[i]).collect();
    let mut labels: HashMap<&str, usize> = HashMap::new();
    let ids = entries
        .iter()
        .map(|e| e.item_id.as_str())
        .chain(kept_queries.iter().map(|q| q.item_id.as_str()));
    for id in ids {
        let next = labels.len();
        labels.entry(id).or_insert(next);
    }
    let g_items: Vec<usize> = entries.iter().map(|e| labels[e.item_id.as_str()]).collect();
    let q_items: Vec<usize> = kept_queries
        .iter()
        .map(|q| labels[q.item_id.as_str()])
        .collect();
    let dev = Device::Cpu;
    let dim = gallery.cols;
    let qt = Tensor::from_slice(&vectors, (kept.len(), dim), &dev).map_err(|e| e.to_string())?;
    let gt =
        Tensor::from_slice(&gallery.data, (gallery.rows, dim), &dev).map_err(|e| e.to_string())?;
    let outcomes = eval::query_outcomes(&qt, &gt, &q_items, &g_items, FAILURE_SHOWN)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = kept_queries
        .iter()
        .map(|q| format!("{}/{}", q.big, q.category))
        .collect();
    let categories = category_scores(&names, &outcomes);
    let hit = |h: &Hit, rank: usize| {
        entries.get(h.index).map(|e| GalleryHit {
            rank,
            path: e.path.clone().into(),
            item_id: e.item_id.clone(),
            category: e.category.clone(),
            score: h.score,
        })
    };
    let rows = worst_first(&outcomes)
        .into_iter()
        .map(|j| {
            let o = &outcomes[j];
            let ahead = o.rank.map_or(FAILURE_SHOWN, |r| r - 1);
            FailureRow {
                query: kept_queries[j].clone(),
                rank: o.rank,
                true_hit: o.true_hit.zip(o.rank).and_then(|(h, r)| hit(&h, r)),
                ahead: o
                    .top
                    .iter()
                    .take(ahead)
                    .enumerate()
                    .filter_map(|(i, h)| hit(h, i + 1))
                    .collect(),
            }
        })
        .collect();
    Ok(Some(FailuresReport {
        rows,
        categories,
        gallery: gallery.rows,
        unreadable,
        seconds: started.elapsed().as_secs_f64(),
    }))
}
