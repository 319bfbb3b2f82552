//! `vitrine bench search`: build time, exact-scan QPS, and recall@k / single-thread
//! QPS of HNSW + re-rank at several beam widths, on vectors from `.npy` files.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use hnsw_rs::hnswio::HnswIo;

use super::hnsw::{GraphError, GraphParams, HnswIndex, UnitCosine};
use super::npy::Matrix;
use super::rerank::{SearchParams, VectorIndex, recall_at_k};
use super::store::{IndexError, build_graph_with};
use crate::config::IndexBuilder;
use crate::eval::exact_top_k;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("exact search failed: {0}")]
    Exact(#[from] candle_core::Error),
    #[error("the base vectors are {base}-d but the queries {queries}-d")]
    Dimension { base: usize, queries: usize },
    #[error("no base vectors")]
    Empty,
    #[error("no query vectors")]
    NoQueries,
    #[error("the vectors have no columns (0-d)")]
    NoColumns,
}

#[derive(Debug, Clone)]
pub struct SearchBench {
    pub k: usize,
    pub params: GraphParams,
    /// Beam widths; each run re-ranks a shortlist of the same size.
    pub efs: Vec<usize>,
    /// Queries timed for the exact scan.
    pub exact_queries: usize,
    /// Also time hnsw_rs's own search on the same graph.
    pub hnsw_rs: bool,
    /// Which code builds the graph.
    pub builder: IndexBuilder,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchRun {
    /// `vitrine` (flat graph + re-rank) or `hnsw_rs` (the crate's own search).
    pub engine: String,
    pub ef: usize,
    pub shortlist: usize,
    pub recall_at_k: f64,
    /// Queries per second on one thread.
    pub qps: f64,
    /// Median and 99th-percentile latency of one query, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The `q`-quantile (0..=1) of `values` (sorted here), nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchBenchReport {
    pub n: usize,
    pub dim: usize,
    pub queries: usize,
    pub k: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub threads: usize,
    /// The graph's builder: `vitrine` (its own inserter) or `hnsw_rs`.
    pub builder: String,
    /// Parallel insertion (+ flat copy for hnsw_rs) + self-recall check.
    pub build_s: f64,
    pub self_recall: f64,
    /// Single-thread exact scan.
    pub exact_qps: f64,
    pub runs: Vec<SearchRun>,
}

/// Rows scaled to unit length (zero rows stay zero).
pub fn normalized(m: &Matrix) -> Matrix {
    let mut out = m.clone();
    for row in out.data.chunks_exact_mut(m.cols.max(1)) {
        let n = super::hnsw::dot(row, row).sqrt();
        if n > 0.0 {
            for x in row {
                *x /= n;
            }
        }
    }
    out
}

/// The default sweep of beam widths for `k`.
pub fn default_efs(k: usize) -> Vec<usize> {
    [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]
        .iter()
        .map(|f| ((k as f64 * f).round() as usize).max(1))
        .collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

/// Runs the benchmark; `progress` receives one line per finished stage.
pub fn run(
    base: &Matrix,
    queries: &Matrix,
    opts: &SearchBench,
    progress: &mut dyn FnMut(&str),
) -> Result<SearchBenchReport, BenchError> {
    if base.cols != queries.cols {
        return Err(BenchError::Dimension {
            base: base.cols,
            queries: queries.cols,
        });
    }
    if base.rows == 0 {
        return Err(BenchError::Empty);
    }
    // Guarded here too for library callers: 0-d vectors make a meaningless graph, and
    // no queries a recall of 0/0.
    if base.cols == 0 {
        return Err(BenchError::NoColumns);
    }
    if queries.rows == 0 {
        return Err(BenchError::NoQueries);
    }
    let base = normalized(base);
    let queries = normalized(queries);
    let k = opts.k.max(1);
    // Declared before the build: a reloaded index borrows its loader.
    let mut io = None;
    let (built, build_s) = timed(|| build_graph_with(&base, opts.params, 64, opts.builder));
    let built = built?;
    let self_recall = built.self_recall;
    progress(&format!(
        "built the graph on {} × {} with {} in {build_s:.2} s (self-recall {self_recall:.4})",
        base.rows, base.cols, opts.builder
    ));
    // hnsw_rs's own search runs on an hnsw_rs index: the one it built, or vitrine's
    // graph reloaded by hnsw_rs from its dump.
    let dump_dir = crate::fsutil::temp_path(&std::env::temp_dir().join("vitrine-bench"));
    let reloaded: HnswIndex<'_>;
    let hnsw: Option<&HnswIndex<'_>> = match &built.hnsw {
        _ if !opts.hnsw_rs => None,
        Some(h) => Some(h),
        None => {
            let err = |e: String| {
                BenchError::Index(IndexError::Graph(GraphError::Dump {
                    dir: dump_dir.clone(),
                    message: e,
                }))
            };
            std::fs::create_dir(&dump_dir).map_err(|e| err(e.to_string()))?;
            let written = super::hnsw::write_dump(
                &dump_dir,
                "graph",
                &built.graph,
                &base.data,
                base.cols,
                opts.params.ef_construction,
            );
            let loaded = match written {
                Ok(()) => io
                    .insert(HnswIo::new(&dump_dir, "graph"))
                    .load_hnsw::<f32, UnitCosine>()
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = std::fs::remove_dir_all(&dump_dir);
            reloaded = loaded.map_err(err)?;
            Some(&reloaded)
        }
    };
    let index = VectorIndex::new(base.clone(), built.graph.clone());
    let dev = Device::Cpu;
    let to_tensor = |m: &Matrix| Tensor::from_slice(&m.data, (m.rows, m.cols), &dev);
    let truth: Vec<Vec<usize>> = exact_top_k(&to_tensor(&queries)?, &to_tensor(&base)?, k)?
        .into_iter()
        .map(|hits| hits.into_iter().map(|h| h.index).collect())
        .collect();
    let ne = opts
        .exact_queries
        .clamp(1, queries.rows.max(1))
        .min(queries.rows);
    let ((), exact_s) = timed(|| {
        for q in queries.iter_rows().take(ne) {
            std::hint::black_box(index.exact(q, k));
        }
    });
    let exact_qps = ne as f64 / exact_s.max(1e-9);
    progress(&format!("exact scan: {exact_qps:.0} queries/s"));
    let efs = if opts.efs.is_empty() {
        default_efs(k)
    } else {
        opts.efs.clone()
    };
    let mut runs = Vec::new();
    for &ef in &efs {
        let ef = ef.max(k);
        let params = SearchParams {
            shortlist: ef,
            ef,
            int8: true,
        };
        for q in queries.iter_rows().take(20) {
            std::hint::black_box(index.search(q, k, params));
        }
        let mut measure =
            |engine: &str, shortlist: usize, search: &dyn Fn(&[f32]) -> Vec<usize>| {
                let mut ms = Vec::with_capacity(queries.rows);
                let (found, secs) = timed(|| {
                    queries
                        .iter_rows()
                        .map(|q| {
                            let (hits, s) = timed(|| search(q));
                            ms.push(s * 1e3);
                            hits
                        })
                        .collect::<Vec<_>>()
                });
                let run = SearchRun {
                    engine: engine.into(),
                    ef,
                    shortlist,
                    recall_at_k: recall_at_k(&found, &truth, k),
                    qps: queries.rows as f64 / secs.max(1e-9),
                    p50_ms: quantile(&mut ms, 0.5),
                    p99_ms: quantile(&mut ms, 0.99),
                };
                progress(&format!(
                    "{engine} ef {ef}: recall@{k} {:.4}, {:.0} queries/s",
                    run.recall_at_k, run.qps
                ));
                runs.push(run);
            };
        measure("vitrine", ef, &|q| {
            index.search(q, k, params).iter().map(|h| h.index).collect()
        });
        if let Some(hnsw) = hnsw {
            measure("hnsw_rs", k, &|q| {
                hnsw.search(q, k, ef).iter().map(|n| n.d_id).collect()
            });
        }
    }
    Ok(SearchBenchReport {
        n: base.rows,
        dim: base.cols,
        queries: queries.rows,
        k,
        m: opts.params.m,
        ef_construction: opts.params.ef_construction,
        threads: rayon::current_num_threads(),
        builder: opts.builder.name().into(),
        build_s,
        self_recall,
        exact_qps,
        runs,
    })
}
