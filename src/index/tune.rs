//! The beam a search needs. `vitrine index` measures recall@[`RECALL_K`] of its own
//! graph, searched as searches run it (8-bit walk + exact re-rank of the whole beam),
//! against exact search, with up to [`SAMPLE`] of the gallery's own vectors as
//! queries, and keeps the smallest `ef` that reaches `index.target_recall`; searches
//! use it unless `index.ef_search` is set ([`super::search::params_for`]).
//!
//! Each sampled vector is held out: left out of its own exact top, and taken out of
//! the graph's walk and results ([`VectorIndex::search_row_held_out`]). Left in the
//! walk, the search would step onto it and find its neighbours through its own links,
//! which a query the graph has never seen cannot do: on clustered test vectors that
//! made recall look 0.99 where fresh queries reached 0.95. Gallery vectors still
//! stand in for real queries, so the figure is an estimate; `vitrine eval` and
//! `vitrine bench search` measure recall with real queries.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::rerank::{SearchParams, VectorIndex, recall_at_k};
use crate::eval::top_k_of_row;

/// The k of the measured recall (the dashboard's and DeepFashion's top 20).
pub const RECALL_K: usize = 20;
/// Gallery vectors used as queries, at most.
pub const SAMPLE: usize = 1000;
/// The widest beam tried.
pub const MAX_EF: usize = 4096;
/// Sampled queries ranked exactly per matrix product (one progress step each).
const TRUTH_BLOCK: usize = 100;

/// What the measurement found; stored in the index's header
/// ([`super::store::GraphRecord::search_ef`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EfChoice {
    /// The smallest beam reaching `target` (the widest tried when none did).
    pub ef: usize,
    /// Recall@`k` at `ef`.
    pub recall: f64,
    /// The `index.target_recall` it was chosen for.
    pub target: f64,
    pub k: usize,
    /// Gallery vectors used as queries.
    pub sample: usize,
    /// Whether `ef` reaches `target`.
    pub reached: bool,
}

/// The search parameters the measurement uses for beam `ef`: the whole beam
/// re-ranked, the walk on 8-bit codes (as [`super::search::params_for`] searches).
pub fn params_at(ef: usize) -> SearchParams {
    SearchParams {
        shortlist: ef,
        ef,
        int8: true,
    }
}

/// `sample` evenly spaced rows of `n`.
fn sample_rows(n: usize, sample: usize) -> Vec<usize> {
    let sample = sample.clamp(1, n.max(1));
    let step = n as f64 / sample as f64;
    (0..sample)
        .map(|i| ((i as f64 * step) as usize).min(n - 1))
        .collect()
}

/// Exact top-`k` (cosine of unit rows) of each of `ids` among all rows, each with
/// itself removed; `progress(done)` per block of queries.
fn exact_truth(
    index: &VectorIndex,
    ids: &[usize],
    k: usize,
    progress: &mut dyn FnMut(usize),
) -> candle_core::Result<Vec<Vec<usize>>> {
    let vectors = index.vectors();
    let (n, dim) = (vectors.rows, vectors.cols);
    // A transposed view (no copy of the gallery), as in `eval`.
    let gallery_t = Tensor::from_slice(&vectors.data, (n, dim), &Device::Cpu)?.t()?;
    let mut truth = Vec::with_capacity(ids.len());
    for block in ids.chunks(TRUTH_BLOCK) {
        let rows: Vec<f32> = block
            .iter()
            .flat_map(|&id| vectors.row(id).iter().copied())
            .collect();
        let scores = Tensor::from_vec(rows, (block.len(), dim), &Device::Cpu)?
            .matmul(&gallery_t)?
            .to_vec2::<f32>()?;
        for (row, &id) in scores.iter().zip(block) {
            truth.push(
                top_k_of_row(row, k + 1)
                    .into_iter()
                    .map(|h| h.index)
                    .filter(|&j| j != id)
                    .take(k)
                    .collect(),
            );
        }
        progress(truth.len());
    }
    Ok(truth)
}

/// Recall@`k` of `index` searched with beam `ef`, each of `ids` as a query held out
/// of the walk and of its own results.
fn recall_at(index: &VectorIndex, ids: &[usize], truth: &[Vec<usize>], k: usize, ef: usize) -> f64 {
    let params = params_at(ef);
    let found: Vec<Vec<usize>> = ids
        .par_iter()
        .map(|&id| {
            index
                .search_row_held_out(id, k, params)
                .into_iter()
                .map(|h| h.index)
                .collect()
        })
        .collect();
    recall_at_k(&found, truth, k)
}

/// The smallest beam at which `index` (unit rows) reaches recall@`k` ≥ `target` on
/// `sample` evenly spaced rows of its own (see the module notes): doubling from `k + 1`,
/// then bisecting between the last beam short of the target and the first reaching
/// it. Recall is taken as rising with the beam (it does, but for noise of a query
/// or two). `progress(done, total)` reports the exact ranking of the sample and
/// then each beam tried.
pub fn choose_ef(
    index: &VectorIndex,
    k: usize,
    target: f64,
    sample: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> candle_core::Result<EfChoice> {
    let n = index.len();
    let k = k.max(1);
    // The sampled vector takes one place of each beam's results: a beam of k + 1 at
    // least, which searches then walk exactly as measured.
    let mut choice = EfChoice {
        ef: k + 1,
        recall: 1.0,
        target,
        k,
        sample: 0,
        reached: true,
    };
    if n <= k + 1 {
        // Every other row is in every result, whatever the beam.
        return Ok(choice);
    }
    let ids = sample_rows(n, sample);
    let limit = MAX_EF.max(k + 1).min(n);
    // Beams tried at most: doubling from k to the limit, then bisecting one gap.
    let doublings = (usize::BITS - (limit / (k + 1)).leading_zeros()) as usize + 1;
    let bisections = (usize::BITS - limit.leading_zeros()) as usize;
    let total = ids.len() + doublings + bisections;
    let truth = exact_truth(index, &ids, k, &mut |done| progress(done, total))?;
    choice.sample = ids.len();
    let mut tried = ids.len();
    let mut recall = |ef: usize| {
        let r = recall_at(index, &ids, &truth, k, ef);
        tried += 1;
        progress(tried.min(total - 1), total);
        r
    };
    // Doubling: `lo` falls short (0: nothing tried yet), `hi` reaches the target.
    let mut lo = 0;
    let mut ef = k + 1;
    let (mut hi, mut hi_recall) = loop {
        let r = recall(ef);
        if r >= target {
            break (ef, r);
        }
        if ef >= limit {
            progress(total, total);
            choice.ef = ef;
            choice.recall = r;
            choice.reached = false;
            return Ok(choice);
        }
        lo = ef;
        ef = (2 * ef).min(limit);
    };
    while lo > 0 && hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let r = recall(mid);
        if r >= target {
            (hi, hi_recall) = (mid, r);
        } else {
            lo = mid;
        }
    }
    progress(total, total);
    choice.ef = hi;
    choice.recall = hi_recall;
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::clustered::{ClusterSpec, vectors};
    use crate::index::hnsw::GraphParams;
    use crate::index::store::build_graph;

    /// A small clustered gallery (loose clusters) with a deliberately weak graph (m 8,
    /// a narrow build beam): recall@10 rises from about 0.94 at the narrowest beam
    /// to 0.99 near ef 50 and 0.999 near 160.
    fn weak_index() -> VectorIndex {
        let spec = ClusterSpec {
            dim: 32,
            clusters: 60,
            group_size: 10,
            spread: 1.0,
            ..ClusterSpec::default()
        };
        let base = vectors(&spec, 3000, 0);
        let params = GraphParams {
            m: 8,
            ef_construction: 24,
        };
        let (_hnsw, graph, _) = build_graph(&base, params, 64).expect("build");
        VectorIndex::new(base, graph)
    }

    #[test]
    fn the_chosen_beam_is_the_smallest_reaching_the_target() {
        let index = weak_index();
        let k = 10;
        let ids = sample_rows(index.len(), 300);
        let truth = exact_truth(&index, &ids, k, &mut |_| {}).expect("truth");
        // Brute force: every beam from k + 1 up, the first reaching each target.
        let sweep: Vec<(usize, f64)> = (k + 1..=160)
            .map(|ef| (ef, recall_at(&index, &ids, &truth, k, ef)))
            .collect();
        let at_k = sweep[0].1;
        assert!(at_k < 0.99, "the weak graph is too good to test: {at_k}");
        let mut steps = Vec::new();
        let mut checked = 0;
        for target in [0.95, 0.97, 0.98, 0.99, 0.995] {
            // Only targets the whole tail of the sweep reaches.
            let Some(&(first, _)) = sweep.iter().find(|(_, r)| *r >= target) else {
                continue;
            };
            if sweep.last().is_some_and(|(_, r)| *r < target) {
                continue;
            }
            checked += 1;
            let choice =
                choose_ef(&index, k, target, 300, &mut |d, t| steps.push((d, t))).expect("choose");
            assert!(choice.reached, "target {target}: {choice:?}");
            assert!(choice.recall >= target, "target {target}: {choice:?}");
            assert_eq!(choice.sample, 300);
            // Recall is not quite monotone in the beam (a query or two of noise): the
            // bisection stops on a beam reaching the target whose predecessor falls
            // short, at or after the first beam reaching it, and never after the
            // beam from which every wider one reaches it. Where recall is monotone,
            // those are one beam.
            let stable = sweep
                .iter()
                .rposition(|(_, r)| *r < target)
                .map_or(k + 1, |i| sweep[i].0 + 1);
            assert!(
                (first..=stable).contains(&choice.ef),
                "target {target}: {choice:?}, first {first}, stable from {stable}"
            );
            assert!(
                choice.ef == k + 1 || sweep[choice.ef - k - 2].1 < target,
                "target {target}: ef {} - 1 reaches it too",
                choice.ef
            );
        }
        assert!(checked >= 4, "the sweep reaches too few targets: {sweep:?}");
        let (done, total) = *steps.last().expect("progress");
        assert_eq!(done, total, "progress ends at its total");
    }

    #[test]
    fn an_unreachable_target_reports_the_widest_beam() {
        let index = weak_index();
        let choice = choose_ef(&index, 10, 1.0 + 1e-9, 100, &mut |_, _| {}).expect("choose");
        assert!(!choice.reached);
        assert_eq!(choice.ef, MAX_EF.min(index.len()));
    }

    #[test]
    fn a_gallery_smaller_than_k_needs_no_measurement() {
        let base = vectors(&ClusterSpec::default(), 5, 0);
        let params = GraphParams {
            m: 16,
            ef_construction: 200,
        };
        let (_h, graph, _) = build_graph(&base, params, 64).expect("build");
        let choice = choose_ef(
            &VectorIndex::new(base, graph),
            20,
            0.99,
            1000,
            &mut |_, _| {},
        )
        .expect("choose");
        assert_eq!((choice.ef, choice.reached, choice.sample), (21, true, 0));
    }
}
