//! `vitrine bench search`: build time, exact-scan QPS, and recall@k / single-thread
//! QPS of HNSW + re-rank at several beam widths, on vectors from `.npy` files. The
//! default sweep is fine (every 8 up to 128, with the older coarse grid's beams kept
//! for comparison) and bisected further, so that the first beam reaching each of a
//! few recall targets is measured, not guessed; beside it, the beam `vitrine index`
//! would choose on the base vectors ([`super::tune`]).

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use hnsw_rs::hnswio::HnswIo;

use super::bandwidth::{self, ReadBandwidth};
use super::hnsw::{GraphError, GraphParams, HnswIndex, UnitCosine};
use super::npy::Matrix;
use super::rerank::{SearchParams, VectorIndex, recall_at_k};
use super::store::{IndexError, build_graph_with};
use super::tune;
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
    /// Recall targets whose first beam is reported (the default sweep is extended
    /// and bisected down to each).
    pub targets: Vec<f64>,
    /// The target `vitrine index` measures its beam for (`index.target_recall`).
    pub index_target: f64,
    /// Which code builds the graph.
    pub builder: IndexBuilder,
}

/// The recall targets reported besides `index.target_recall`.
pub const TARGETS: [f64; 4] = [0.9, 0.95, 0.99, 0.995];

/// The first beam of the sweep reaching a recall target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirstEf {
    pub target: f64,
    /// The narrowest measured beam reaching `target` (`None`: none did).
    pub ef: Option<usize>,
    /// Its recall@k.
    pub recall_at_k: Option<f64>,
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
    /// Queries per second from the median time of 10 consecutive queries: on a
    /// shared machine, robust to the time slices other processes take (`qps` is
    /// not); `benches/peers/hnswlib_bench.py` reports the same.
    pub qps_median10: f64,
}

/// Queries per second from the median total of `CHUNK` consecutive latencies (ms).
pub(crate) fn qps_median_chunk(ms: &[f64]) -> f64 {
    const CHUNK: usize = 10;
    let mut sums: Vec<f64> = ms.chunks_exact(CHUNK).map(|c| c.iter().sum()).collect();
    if sums.is_empty() {
        return 0.0;
    }
    let median = quantile(&mut sums, 0.5);
    CHUNK as f64 * 1e3 / median.max(1e-9)
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
    /// The same scan on every thread of the pool (each query's rows split among them:
    /// what `vitrine search --exact` runs).
    pub exact_qps_all_threads: f64,
    /// Gallery bytes the exact scan reads per second, on one thread and on all.
    pub exact_gb_per_s: f64,
    pub exact_gb_per_s_all_threads: f64,
    /// This machine's read bandwidth measured in the same run (a read-only pass over
    /// `read_bandwidth.bytes`; the fastest of a few passes): the exact scan's floor.
    /// `None` for galleries under [`bandwidth::MIN_GALLERY_BYTES`], which stay in
    /// the caches.
    pub read_bandwidth: Option<ReadBandwidth>,
    /// The exact ranking of all queries at once (`vitrine eval`'s path: GEMM blocks,
    /// then each score row's top-k on the pool), queries per second.
    pub exact_batch_qps: f64,
    pub runs: Vec<SearchRun>,
    /// The first beam (vitrine engine) reaching each of the targets.
    pub first_ef: Vec<FirstEf>,
    /// The beam `vitrine index` would store for these base vectors (its own
    /// measurement, with base vectors as queries: [`tune::choose_ef`]) for
    /// `index_target`; its recall on the real queries is among `runs`.
    pub index_ef: tune::EfChoice,
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

/// The coarse sweep of beam widths for `k` (k to 16·k; what the PostgreSQL half of
/// the benchmark measures, and what earlier versions measured in-process).
pub fn default_efs(k: usize) -> Vec<usize> {
    [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]
        .iter()
        .map(|f| ((k as f64 * f).round() as usize).max(1))
        .collect()
}

/// The in-process default sweep for `k`: the coarse one's beams plus every 8 from
/// 16 to 128 (none below k), ascending.
pub fn fine_efs(k: usize) -> Vec<usize> {
    let mut efs = default_efs(k);
    efs.extend((16..=128).step_by(8).filter(|&ef| ef >= k));
    efs.sort_unstable();
    efs.dedup();
    efs
}

/// The first beam reaching each target among `runs` of the vitrine engine.
fn first_efs(runs: &[SearchRun], targets: &[f64]) -> Vec<FirstEf> {
    targets
        .iter()
        .map(|&target| {
            let first = runs
                .iter()
                .filter(|r| r.engine == "vitrine" && r.recall_at_k >= target)
                .min_by_key(|r| r.ef);
            FirstEf {
                target,
                ef: first.map(|r| r.ef),
                recall_at_k: first.map(|r| r.recall_at_k),
            }
        })
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
    let (truth, batch_s) = timed(|| exact_top_k(&to_tensor(&queries)?, &to_tensor(&base)?, k));
    let truth: Vec<Vec<usize>> = truth?
        .into_iter()
        .map(|hits| hits.into_iter().map(|h| h.index).collect())
        .collect();
    let exact_batch_qps = queries.rows as f64 / batch_s.max(1e-9);
    progress(&format!(
        "exact ranking of all {} queries at once: {exact_batch_qps:.0} queries/s",
        queries.rows
    ));
    let ne = opts
        .exact_queries
        .clamp(1, queries.rows.max(1))
        .min(queries.rows);
    let exact_run = || {
        let ((), s) = timed(|| {
            for q in queries.iter_rows().take(ne) {
                std::hint::black_box(index.exact(q, k));
            }
        });
        ne as f64 / s.max(1e-9)
    };
    let exact_qps = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(one) => one.install(exact_run),
        Err(_) => exact_run(),
    };
    let exact_qps_all_threads = exact_run();
    let gallery_bytes = base.data.len() * 4;
    let read_bandwidth =
        (gallery_bytes >= bandwidth::MIN_GALLERY_BYTES).then(|| bandwidth::measure(gallery_bytes));
    let gallery_gb = gallery_bytes as f64 / 1e9;
    let share = |gb: f64, of: Option<f64>| match of {
        Some(of) => format!(
            ", {:.0}% of the read bandwidth, {of:.1} GB/s",
            100.0 * gb / of.max(1e-9)
        ),
        None => String::new(),
    };
    progress(&format!(
        "exact scan: {exact_qps:.0} queries/s on one thread ({:.1} GB/s{}), {exact_qps_all_threads:.0} on {} ({:.1} GB/s{})",
        exact_qps * gallery_gb,
        share(
            exact_qps * gallery_gb,
            read_bandwidth.map(|b| b.one_thread_gb_per_s)
        ),
        rayon::current_num_threads(),
        exact_qps_all_threads * gallery_gb,
        share(
            exact_qps_all_threads * gallery_gb,
            read_bandwidth.map(|b| b.all_threads_gb_per_s)
        ),
    ));
    let efs = if opts.efs.is_empty() {
        fine_efs(k)
    } else {
        opts.efs.clone()
    };
    let mut runs: Vec<SearchRun> = Vec::new();
    let measure =
        |engine: &str, ef: usize, shortlist: usize, search: &dyn Fn(&[f32]) -> Vec<usize>| {
            for q in queries.iter_rows().take(20) {
                std::hint::black_box(search(q));
            }
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
            let qps_median10 = qps_median_chunk(&ms);
            SearchRun {
                engine: engine.into(),
                ef,
                shortlist,
                recall_at_k: recall_at_k(&found, &truth, k),
                qps: queries.rows as f64 / secs.max(1e-9),
                qps_median10,
                p50_ms: quantile(&mut ms, 0.5),
                p99_ms: quantile(&mut ms, 0.99),
            }
        };
    let record = |run: SearchRun, runs: &mut Vec<SearchRun>, progress: &mut dyn FnMut(&str)| {
        progress(&format!(
            "{} ef {}: recall@{k} {:.4}, {:.0} queries/s",
            run.engine, run.ef, run.recall_at_k, run.qps
        ));
        let recall = run.recall_at_k;
        runs.push(run);
        recall
    };
    // One run of the vitrine engine per beam (measured once).
    let vitrine = |ef: usize, runs: &mut Vec<SearchRun>, progress: &mut dyn FnMut(&str)| {
        let ef = ef.max(k);
        if let Some(r) = runs.iter().find(|r| r.engine == "vitrine" && r.ef == ef) {
            return r.recall_at_k;
        }
        let params = SearchParams {
            shortlist: ef,
            ef,
            int8: true,
        };
        let run = measure("vitrine", ef, ef, &|q| {
            index.search(q, k, params).iter().map(|h| h.index).collect()
        });
        record(run, runs, progress)
    };
    for &ef in &efs {
        vitrine(ef, &mut runs, progress);
        if let Some(hnsw) = hnsw {
            let ef = ef.max(k);
            let run = measure("hnsw_rs", ef, k, &|q| {
                hnsw.search(q, k, ef).iter().map(|n| n.d_id).collect()
            });
            record(run, &mut runs, progress);
        }
    }
    // What `vitrine index` would choose here, and its recall on the real queries.
    let index_ef = tune::choose_ef(&index, k, opts.index_target, tune::SAMPLE, &mut |_, _| {})?;
    progress(&format!(
        "`vitrine index` would choose ef {} (recall@{k} {:.4} on {} base vectors as queries, target {})",
        index_ef.ef, index_ef.recall, index_ef.sample, opts.index_target
    ));
    vitrine(index_ef.ef, &mut runs, progress);
    if opts.efs.is_empty() {
        // Beyond the sweep, double the widest beam until each target is reached (up
        // to the widest `vitrine index` tries); then bisect the gap below each
        // target's first beam, so that the first beam reaching it is measured
        // (recall taken as rising with the beam).
        let limit = tune::MAX_EF.max(k).min(base.rows);
        for &target in &opts.targets {
            while first_efs(&runs, &[target])[0].ef.is_none() {
                let widest = runs
                    .iter()
                    .filter(|r| r.engine == "vitrine")
                    .map(|r| r.ef)
                    .max()
                    .unwrap_or(k);
                if widest >= limit {
                    break;
                }
                vitrine((2 * widest).min(limit), &mut runs, progress);
            }
            let Some(mut hi) = first_efs(&runs, &[target])[0].ef else {
                continue;
            };
            let mut lo = runs
                .iter()
                .filter(|r| r.engine == "vitrine" && r.ef < hi)
                .map(|r| r.ef)
                .max()
                .unwrap_or(hi);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if vitrine(mid, &mut runs, progress) >= target {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
        }
    }
    runs.sort_by(|a, b| a.ef.cmp(&b.ef).then_with(|| b.engine.cmp(&a.engine)));
    let first_ef = first_efs(&runs, &opts.targets);
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
        exact_qps_all_threads,
        exact_gb_per_s: exact_qps * gallery_gb,
        exact_gb_per_s_all_threads: exact_qps_all_threads * gallery_gb,
        read_bandwidth,
        exact_batch_qps,
        runs,
        first_ef,
        index_ef,
    })
}
