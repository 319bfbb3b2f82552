//! Vectors plus their graph: an HNSW shortlist re-ranked by exact cosine, and the
//! exact scan it is measured against. The walk on 8-bit codes is
//! [`super::walk`]'s; the shortlist's float rows are scattered, so the re-rank
//! prefetches them a few rows ahead.

use std::sync::Mutex;

use vitrine_kernels::codes::CodeQuery;
use vitrine_kernels::dot::prefetch;

use super::hnsw::{Graph, dot};
use super::npy::Matrix;
use super::walk::{Codes, WalkScratch, quantize, search_codes};
use crate::eval::Hit;

/// Shortlist rows prefetched ahead of the one the re-rank scores.
const RERANK_AHEAD: usize = 4;

/// How wide a search looks before re-ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParams {
    /// Graph candidates re-ranked by exact cosine; 0 = `5·k`. Never below `k`.
    pub shortlist: usize,
    /// Beam width of the graph search; 0 = the shortlist. Never below it.
    pub ef: usize,
    /// Walk the graph on 8-bit codes of the vectors (4× less memory traffic; the
    /// shortlist is re-ranked on the exact vectors either way).
    pub int8: bool,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self {
            shortlist: 0,
            ef: 0,
            int8: true,
        }
    }
}

impl SearchParams {
    /// `(shortlist, ef)` for `k` results.
    pub fn resolve(&self, k: usize) -> (usize, usize) {
        let shortlist = if self.shortlist == 0 {
            5 * k
        } else {
            self.shortlist
        }
        .max(k);
        (shortlist, self.ef.max(shortlist))
    }
}

/// Unit (or any) row vectors with their HNSW graph; rows are ids.
#[derive(Debug)]
pub struct VectorIndex {
    vectors: Matrix,
    /// 1 / ‖row‖ (0 for a zero row), for exact cosine.
    inv_norms: Vec<f32>,
    /// `round(x · code_scale)` of every value, in `[-127, 127]` ([`Codes`]).
    codes: Codes,
    code_scale: f32,
    graph: Graph,
    /// Buffers of finished walks, reused by the next ones.
    scratch: Mutex<Vec<WalkScratch>>,
}

fn inv_norm(v: &[f32]) -> f32 {
    let n = dot(v, v).sqrt();
    if n > 0.0 { 1.0 / n } else { 0.0 }
}

impl VectorIndex {
    /// `graph` must have been built on `vectors`' rows (or be empty).
    pub fn new(vectors: Matrix, graph: Graph) -> Self {
        let inv_norms = vectors.iter_rows().map(inv_norm).collect();
        let max_abs = vectors
            .data
            .iter()
            .fold(0f32, |m, x| if x.is_finite() { m.max(x.abs()) } else { m });
        let code_scale = if max_abs > 0.0 { 127.0 / max_abs } else { 1.0 };
        let codes = Codes::new(&vectors.data, vectors.cols, code_scale);
        Self {
            vectors,
            inv_norms,
            codes,
            code_scale,
            graph,
            scratch: Mutex::new(Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.vectors.rows
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.rows == 0
    }

    pub fn dim(&self) -> usize {
        self.vectors.cols
    }

    pub fn vectors(&self) -> &Matrix {
        &self.vectors
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Exact cosine of `q` with row `id`.
    #[inline]
    fn cosine(&self, q: &[f32], q_inv: f32, id: usize) -> f32 {
        dot(q, self.vectors.row(id)) * q_inv * self.inv_norms[id]
    }

    /// The graph's `shortlist` best rows for `q` (beam `ef`), best first by the walk's
    /// own measure (a dot product of codes or of vectors).
    pub fn shortlist(&self, q: &[f32], shortlist: usize, ef: usize, int8: bool) -> Vec<u32> {
        self.shortlist_without(q, shortlist, ef, int8, None)
    }

    /// [`Self::shortlist`] with row `hidden` taken out of the walk (scored below
    /// everything, so that it is never stepped on nor returned): a gallery row
    /// searched as if it were a query the graph had never seen.
    fn shortlist_without(
        &self,
        q: &[f32],
        shortlist: usize,
        ef: usize,
        int8: bool,
        hidden: Option<u32>,
    ) -> Vec<u32> {
        let mut scratch = self
            .scratch
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default();
        let dim = self.vectors.cols;
        let ef = ef.max(shortlist);
        let mut found: Vec<u32> = if int8 {
            let qc: Vec<i8> = q.iter().map(|&x| quantize(x, self.code_scale)).collect();
            let qc = CodeQuery::new(&qc);
            search_codes(&self.graph, &self.codes, &qc, ef, hidden, &mut scratch)
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        } else {
            let data = &self.vectors.data;
            self.graph
                .search(
                    |id| {
                        if Some(id) == hidden {
                            f32::NEG_INFINITY
                        } else {
                            dot(q, &data[id as usize * dim..(id as usize + 1) * dim])
                        }
                    },
                    ef,
                    &mut scratch.visited,
                )
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        if let Ok(mut pool) = self.scratch.lock() {
            pool.push(scratch);
        }
        if let Some(h) = hidden {
            found.retain(|&id| id != h);
        }
        found.truncate(shortlist);
        found
    }

    /// Top `k` by exact cosine among the HNSW shortlist. `q` must be `dim()` long.
    pub fn search(&self, q: &[f32], k: usize, params: SearchParams) -> Vec<Hit> {
        self.search_without(q, k, params, None)
    }

    /// [`Self::search`] of gallery row `row` as a query the graph has never seen: the
    /// row is out of the walk and of the results (how `vitrine index` measures the
    /// beam searches need, [`super::tune`]).
    pub fn search_row_held_out(&self, row: usize, k: usize, params: SearchParams) -> Vec<Hit> {
        if row >= self.len() {
            return Vec::new();
        }
        let hidden = u32::try_from(row).ok();
        let mut hits = self.search_without(self.vectors.row(row), k + 1, params, hidden);
        hits.retain(|h| h.index != row);
        hits.truncate(k);
        hits
    }

    fn search_without(
        &self,
        q: &[f32],
        k: usize,
        params: SearchParams,
        hidden: Option<u32>,
    ) -> Vec<Hit> {
        if k == 0 || self.is_empty() || q.len() != self.dim() {
            return Vec::new();
        }
        if self.graph.len() != self.len() {
            return self.exact(q, k);
        }
        let (shortlist, ef) = params.resolve(k);
        let q_inv = inv_norm(q);
        let ids = self.shortlist_without(q, shortlist, ef, params.int8, hidden);
        // The shortlist's rows are scattered: each is prefetched four rows ahead of
        // its score, which is `exact`'s own (same `dot`, so the same bits).
        for &id in ids.iter().take(RERANK_AHEAD) {
            prefetch(self.vectors.row(id as usize));
        }
        let mut hits: Vec<Hit> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if let Some(&next) = ids.get(i + RERANK_AHEAD) {
                    prefetch(self.vectors.row(next as usize));
                }
                Hit {
                    index: id as usize,
                    score: self.cosine(q, q_inv, id as usize),
                }
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        hits.truncate(k);
        hits
    }

    /// Top `k` by exact cosine over every row ([`super::exact`]: a blocked scan on
    /// the rayon pool, the same ranking as scoring every row and sorting).
    pub fn exact(&self, q: &[f32], k: usize) -> Vec<Hit> {
        if k == 0 || self.is_empty() || q.len() != self.dim() {
            return Vec::new();
        }
        super::exact::top_k(q, inv_norm(q), &self.vectors.data, &self.inv_norms, k)
    }
}

/// Mean share of each exact top-k list found in the matching approximate list.
pub fn recall_at_k(approx: &[Vec<usize>], exact: &[Vec<usize>], k: usize) -> f64 {
    if approx.is_empty() || k == 0 {
        return 1.0;
    }
    let mut sum = 0.0;
    for (a, e) in approx.iter().zip(exact) {
        let e: Vec<usize> = e.iter().copied().take(k).collect();
        if e.is_empty() {
            sum += 1.0;
            continue;
        }
        let found = a.iter().take(k).filter(|id| e.contains(id)).count();
        sum += found as f64 / e.len() as f64;
    }
    sum / approx.len() as f64
}
