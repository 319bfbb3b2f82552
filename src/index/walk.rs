//! The graph walk on 8-bit codes, the hot loop of every search.
//!
//! It is [`Graph::search`] with the same steps and the same results (tested), laid
//! out for a CPU whose time goes to waiting on memory, as hnswlib lays out its own:
//!
//! - **Codes**: every vector as 8-bit codes (¼ of the float row's bytes), stored
//!   `code + 128` ([`vitrine_kernels::codes`]: AVX-512 VNNI's unsigned operand) in
//!   rows that start on 64-byte cache lines, so a 512-d row is exactly 8 lines.
//! - **Batches**: when a candidate is taken, its unvisited neighbours are gathered
//!   first and then scored together ([`dot_code_rows`]: four rows per pass sharing
//!   the query's loads, the next rows' lines prefetched meanwhile), so that the
//!   scattered rows' loads overlap instead of each waiting for the previous one;
//!   the next candidate's link list is prefetched before they are scored.
//! - **Heaps of integers**: a code dot product is an exact `i32`, so each heap
//!   entry is one `u64` (score above, `!id` below: higher score first, then lower
//!   id, [`super::hnsw::Scored`]'s order) and compares in one instruction.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use vitrine_kernels::codes::{CodeQuery, dot_code_rows, stored};

use super::hnsw::{Graph, Visited};

/// Rows start on this many bytes (a cache line).
const ALIGN: usize = 64;

/// 8-bit codes of a matrix's rows, `code + 128` per value, row `i` at
/// `i · stride` of [`Self::rows`], every row 64-byte aligned.
#[derive(Debug, Default)]
pub struct Codes {
    /// Never resized after [`Self::new`], so `start` stays the aligned offset.
    bytes: Vec<u8>,
    start: usize,
    dim: usize,
    stride: usize,
    rows: usize,
}

impl Codes {
    /// The codes `round(x · scale)`, clamped to `[-127, 127]`, of `data`'s rows.
    pub fn new(data: &[f32], dim: usize, scale: f32) -> Self {
        let stride = dim.div_ceil(ALIGN) * ALIGN;
        let rows = data.len().checked_div(dim).unwrap_or(0);
        let mut bytes = vec![stored(0); rows * stride + ALIGN - 1];
        let start = bytes.as_ptr().align_offset(ALIGN).min(ALIGN - 1);
        for (i, row) in data.chunks_exact(dim.max(1)).enumerate() {
            let out = &mut bytes[start + i * stride..start + i * stride + dim];
            for (o, &x) in out.iter_mut().zip(row) {
                *o = stored(quantize(x, scale));
            }
        }
        Self {
            bytes,
            start,
            dim,
            stride,
            rows,
        }
    }

    /// Every row, `stride` bytes apart.
    fn rows(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Row `id`'s stored codes (`dim` bytes).
    pub fn row(&self, id: u32) -> &[u8] {
        let s = id as usize * self.stride;
        &self.rows()[s..s + self.dim]
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// One value's code `round(x · scale)`, clamped to `[-127, 127]`.
#[inline]
pub fn quantize(x: f32, scale: f32) -> i8 {
    (x * scale).round().clamp(-127.0, 127.0) as i8
}

/// A heap entry: higher score first, then lower id.
#[inline]
fn key(score: i32, id: u32) -> u64 {
    (u64::from(score as u32 ^ 0x8000_0000) << 32) | u64::from(!id)
}

#[inline]
fn score_of(key: u64) -> i32 {
    ((key >> 32) as u32 ^ 0x8000_0000) as i32
}

#[inline]
fn id_of(key: u64) -> u32 {
    !(key as u32)
}

/// Buffers one walk reuses (kept with the [`Visited`] list between searches).
#[derive(Debug, Default)]
pub struct WalkScratch {
    pub visited: Visited,
    candidates: BinaryHeap<u64>,
    top: BinaryHeap<Reverse<u64>>,
    ids: Vec<u32>,
    scores: Vec<i32>,
}

/// The `ef` best nodes of `graph` for the query `q` by code dot product, best first;
/// `hidden` scores below everything (as `f32::NEG_INFINITY` does in
/// [`Graph::search`]), so it is never stepped on, though it may be returned when the
/// walk starts on it. `codes` holds a row for every node.
pub fn search_codes(
    graph: &Graph,
    codes: &Codes,
    q: &CodeQuery,
    ef: usize,
    hidden: Option<u32>,
    scratch: &mut WalkScratch,
) -> Vec<(u32, i32)> {
    if graph.is_empty() || ef == 0 {
        return Vec::new();
    }
    let rows = codes.rows();
    let stride = codes.stride;
    let WalkScratch {
        visited,
        candidates,
        top,
        ids,
        scores,
    } = scratch;
    // Scores `ids` into `scores`.
    let score = |ids: &[u32], scores: &mut Vec<i32>| {
        scores.clear();
        scores.resize(ids.len(), 0);
        dot_code_rows(q, rows, stride, ids, scores);
        if let Some(h) = hidden {
            for (s, &id) in scores.iter_mut().zip(ids) {
                if id == h {
                    *s = i32::MIN;
                }
            }
        }
    };
    let (cur, cur_s) = graph.descend(&score, scores);
    visited.start(graph.len());
    visited.insert(cur);
    candidates.clear();
    top.clear();
    candidates.push(key(cur_s, cur));
    top.push(Reverse(key(cur_s, cur)));
    let mut worst = cur_s;
    while let Some(c) = candidates.pop() {
        if score_of(c) < worst && top.len() >= ef {
            break;
        }
        ids.clear();
        ids.extend(
            graph
                .links0(id_of(c))
                .iter()
                .copied()
                .filter(|&nb| visited.insert(nb)),
        );
        if let Some(&next) = candidates.peek() {
            graph.prefetch_links0(id_of(next));
        }
        score(ids, scores);
        for (&nb, &sn) in ids.iter().zip(scores.iter()) {
            if top.len() < ef || sn > worst {
                candidates.push(key(sn, nb));
                top.push(Reverse(key(sn, nb)));
                if top.len() > ef {
                    top.pop();
                }
                if let Some(&Reverse(w)) = top.peek() {
                    worst = score_of(w);
                }
            }
        }
    }
    let mut out: Vec<u64> = top.drain().map(|Reverse(k)| k).collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    out.into_iter().map(|k| (id_of(k), score_of(k))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_kernels::dot::dot_i8;

    #[test]
    fn keys_order_like_scored() {
        let pairs = [
            (i32::MIN, 0),
            (-5, 3),
            (-5, 2),
            (0, u32::MAX),
            (0, 0),
            (7, 1),
        ];
        for &(sa, ia) in &pairs {
            for &(sb, ib) in &pairs {
                let want = super::super::hnsw::Scored(sa as f32, ia)
                    .cmp(&super::super::hnsw::Scored(sb as f32, ib));
                assert_eq!(key(sa, ia).cmp(&key(sb, ib)), want, "{sa} {ia} {sb} {ib}");
                assert_eq!((score_of(key(sa, ia)), id_of(key(sa, ia))), (sa, ia));
            }
        }
    }

    #[test]
    fn codes_rows_are_aligned_and_round_trip() {
        for dim in [1, 3, 64, 100, 512] {
            let data: Vec<f32> = (0..dim * 5)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let codes = Codes::new(&data, dim, 127.0);
            assert_eq!(codes.len(), 5);
            for id in 0..5u32 {
                let row = codes.row(id);
                assert_eq!(row.as_ptr().align_offset(ALIGN), 0);
                let want: Vec<u8> = data[id as usize * dim..(id as usize + 1) * dim]
                    .iter()
                    .map(|&x| stored(quantize(x, 127.0)))
                    .collect();
                assert_eq!(row, &want[..]);
            }
        }
        assert!(Codes::new(&[], 0, 1.0).is_empty());
    }

    /// Random points on a random graph: the walk returns exactly what
    /// [`Graph::search`] returns with the same scores, hidden row or not.
    #[test]
    fn walk_equals_the_reference_search() {
        let (n, dim) = (300usize, 40usize);
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let data: Vec<f32> = (0..n * dim)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let lists: Vec<(usize, Vec<Vec<u32>>)> = (0..n)
            .map(|id| {
                let levels = if id % 50 == 0 {
                    3
                } else if id % 7 == 0 {
                    2
                } else {
                    1
                };
                let layers = (0..levels)
                    .map(|l| {
                        let width = if l == 0 { 12 } else { 4 };
                        (0..width).map(|_| (next() % n as u64) as u32).collect()
                    })
                    .collect();
                (id, layers)
            })
            .collect();
        let graph = Graph::from_links(n, 6, lists, 0, 2).expect("graph");
        let codes = Codes::new(&data, dim, 127.0);
        let mut scratch = WalkScratch::default();
        let mut visited = Visited::default();
        for qi in 0..20 {
            let qf: Vec<f32> = (0..dim)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let qc: Vec<i8> = qf.iter().map(|&x| quantize(x, 127.0)).collect();
            let prepared = CodeQuery::new(&qc);
            let plain: Vec<Vec<i8>> = (0..n)
                .map(|i| {
                    data[i * dim..(i + 1) * dim]
                        .iter()
                        .map(|&x| quantize(x, 127.0))
                        .collect()
                })
                .collect();
            for ef in [1, 5, 20, 64] {
                for hidden in [None, Some(qi as u32 * 13), Some(0)] {
                    let want = graph.search(
                        |id| {
                            if Some(id) == hidden {
                                f32::NEG_INFINITY
                            } else {
                                dot_i8(&qc, &plain[id as usize]) as f32
                            }
                        },
                        ef,
                        &mut visited,
                    );
                    let got = search_codes(&graph, &codes, &prepared, ef, hidden, &mut scratch);
                    let got: Vec<(u32, f32)> = got
                        .into_iter()
                        .map(|(id, s)| {
                            (
                                id,
                                if s == i32::MIN {
                                    f32::NEG_INFINITY
                                } else {
                                    s as f32
                                },
                            )
                        })
                        .collect();
                    assert_eq!(got, want, "query {qi} ef {ef} hidden {hidden:?}");
                }
            }
        }
    }
}
