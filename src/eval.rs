//! DeepFashion's retrieval metrics, in one place for the trainer's validation and
//! `vitrine eval`: top-k accuracy (a query is a hit when its item is among the k
//! nearest gallery images) and MAP@R, over an exact ranking computed with one
//! batched matrix product (GEMM) per block of queries.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub mod topk;

pub use topk::TopK;

/// The k of DeepFashion's top-k accuracy that vitrine reports.
pub const REPORTED_K: [usize; 5] = [1, 5, 10, 20, 50];

/// What a person must know when the gallery holds no more images than some reported
/// k: top-k then cannot miss (a query's item is found whenever it has a gallery image
/// at all), so a 100% there says nothing about the ranking. `None` for larger
/// galleries.
pub fn saturation_note(gallery: usize, ks: &[usize]) -> Option<String> {
    let saturated: Vec<String> = ks
        .iter()
        .filter(|&&k| gallery <= k)
        .map(|k| format!("top-{k}"))
        .collect();
    if saturated.is_empty() {
        return None;
    }
    Some(format!(
        "the gallery holds only {gallery} images, so {} count{} every query whose item has a gallery image (no ranking can miss)",
        saturated.join(", "),
        if saturated.len() == 1 { "s" } else { "" }
    ))
}

/// Queries scored per GEMM block (bounds the score matrix held at once).
const QUERY_BLOCK: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Row of the gallery matrix.
    pub index: usize,
    /// Cosine similarity (dot product of unit vectors).
    pub score: f32,
}

/// Best first; ties broken by the lower gallery index so rankings are deterministic.
/// A total order (NaN scores sort last), so sorting never sees an inconsistent
/// comparison.
fn rank_order(a: &Hit, b: &Hit) -> Ordering {
    let key = |h: &Hit| {
        if h.score.is_nan() {
            f32::NEG_INFINITY
        } else {
            h.score
        }
    };
    key(b).total_cmp(&key(a)).then(a.index.cmp(&b.index))
}

/// The `k` best hits of one score row: a running top-k when `k` is small beside the
/// row, else a selection over all of it (the same hits either way).
pub fn top_k_of_row(scores: &[f32], k: usize) -> Vec<Hit> {
    if topk::running_pays(k, scores.len()) {
        let mut top = TopK::new(k);
        top.push_row(0, scores);
        return top.into_sorted();
    }
    let mut hits: Vec<Hit> = scores
        .iter()
        .enumerate()
        .map(|(index, &score)| Hit { index, score })
        .collect();
    let k = k.min(hits.len());
    if k == 0 {
        return Vec::new();
    }
    if k < hits.len() {
        hits.select_nth_unstable_by(k - 1, rank_order);
        hits.truncate(k);
    }
    hits.sort_by(rank_order);
    hits
}

/// Gallery scores held at once (per block of queries): 16 Mi values, 64 MiB, so
/// that a large gallery does not hold `QUERY_BLOCK` full score rows (400 MB each
/// for 100,000 images, and as much again copied out) while still giving the GEMM
/// at least a few dozen queries per block.
const BLOCK_SCORES: usize = 16 << 20;

/// Queries per GEMM block for a gallery of `n` rows.
fn query_block(n: usize) -> usize {
    (BLOCK_SCORES / n.max(1)).clamp(32, QUERY_BLOCK)
}

/// `row(query, scores)` for every query row with its cosine scores against every
/// gallery row, in query order: one GEMM per block of queries (so the whole score
/// matrix never exists at once), then the rows of the block on the rayon pool.
fn map_score_rows<T: Send>(
    queries: &Tensor,
    gallery: &Tensor,
    row: impl Fn(usize, &[f32]) -> T + Sync,
) -> candle_core::Result<Vec<T>> {
    let (nq, _) = queries.dims2()?;
    let (ng, _) = gallery.dims2()?;
    let mut out = Vec::with_capacity(nq);
    if ng == 0 {
        out.extend((0..nq).map(|q| row(q, &[])));
        return Ok(out);
    }
    // A transposed view, not a copy: the GEMM reads either layout at the same speed,
    // and copying a 205 MB gallery took ~2 s of a 4 s evaluation (1,000 queries).
    let gallery_t = gallery.t()?;
    let block = query_block(ng);
    let mut start = 0;
    while start < nq {
        let len = block.min(nq - start);
        let scores = queries
            .narrow(0, start, len)?
            .contiguous()?
            .matmul(&gallery_t)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut done = Vec::with_capacity(len);
        scores
            .par_chunks(ng)
            .enumerate()
            .map(|(i, r)| row(start + i, r))
            .collect_into_vec(&mut done);
        out.append(&mut done);
        start += len;
    }
    Ok(out)
}

/// Exact top-`k` gallery rows for every query row (both `(n, d)`, unit vectors, on
/// any device); scores are cosine similarities.
pub fn exact_top_k(
    queries: &Tensor,
    gallery: &Tensor,
    k: usize,
) -> candle_core::Result<Vec<Vec<Hit>>> {
    map_score_rows(queries, gallery, |_, row| top_k_of_row(row, k))
}

/// Where one query's item lands in the exact ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutcome {
    /// 1-based rank of the best-scoring gallery image of the query's item; `None`
    /// when the gallery has none.
    pub rank: Option<usize>,
    /// That gallery image, and its score.
    pub true_hit: Option<Hit>,
    /// The first `top` hits of the ranking.
    pub top: Vec<Hit>,
}

/// For every query: the rank of its item's best gallery image (everything scoring
/// higher, ties by lower index as in [`exact_top_k`], is ahead of it) and the
/// first `top` hits. Blocked like [`exact_top_k`].
pub fn query_outcomes(
    queries: &Tensor,
    gallery: &Tensor,
    query_labels: &[usize],
    gallery_labels: &[usize],
    top: usize,
) -> candle_core::Result<Vec<QueryOutcome>> {
    map_score_rows(queries, gallery, |q, row| {
        let label = query_labels.get(q);
        let true_hit = row
            .iter()
            .enumerate()
            .filter(|&(g, _)| label.is_some() && gallery_labels.get(g) == label)
            .map(|(index, &score)| Hit { index, score })
            .min_by(rank_order);
        let rank = true_hit.map(|t| {
            1 + row
                .iter()
                .enumerate()
                .filter(|&(index, &score)| rank_order(&Hit { index, score }, &t) == Ordering::Less)
                .count()
        });
        QueryOutcome {
            rank,
            true_hit,
            top: top_k_of_row(row, top),
        }
    })
}

/// Retrieval quality of rankings against item labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    pub queries: usize,
    pub gallery: usize,
    /// k → share of queries whose item is among the first k results. Queries with no
    /// gallery image of their item count as misses (DeepFashion's convention).
    pub top_k: BTreeMap<usize, f64>,
    /// Mean over queries with at least one match of (1/R)·Σ_{i≤R} P(i)·rel(i), where
    /// R is the number of gallery images of the query's item.
    pub map_at_r: f64,
    /// Queries whose item has no image in the gallery.
    pub without_match: usize,
}

impl Retrieval {
    pub fn at(&self, k: usize) -> f64 {
        self.top_k.get(&k).copied().unwrap_or(0.0)
    }
}

/// How deep rankings must go to score `ks` and MAP@R for these labels.
pub fn depth_needed(gallery_labels: &[usize], ks: &[usize]) -> usize {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &l in gallery_labels {
        *counts.entry(l).or_default() += 1;
    }
    let max_r = counts.values().copied().max().unwrap_or(0);
    ks.iter().copied().max().unwrap_or(0).max(max_r)
}

/// Scores rankings (gallery indices, best first) of each query.
pub fn score_rankings(
    rankings: &[Vec<usize>],
    query_labels: &[usize],
    gallery_labels: &[usize],
    ks: &[usize],
) -> Retrieval {
    let mut relevant: BTreeMap<usize, usize> = BTreeMap::new();
    for &l in gallery_labels {
        *relevant.entry(l).or_default() += 1;
    }
    let mut hits_at: BTreeMap<usize, usize> = ks.iter().map(|&k| (k, 0)).collect();
    let mut ap_sum = 0.0;
    let mut with_match = 0usize;
    for (ranking, &label) in rankings.iter().zip(query_labels) {
        let r = relevant.get(&label).copied().unwrap_or(0);
        if r == 0 {
            continue;
        }
        with_match += 1;
        let first_hit = ranking.iter().position(|&g| gallery_labels[g] == label);
        if let Some(pos) = first_hit {
            for (&k, n) in &mut hits_at {
                if pos < k {
                    *n += 1;
                }
            }
        }
        let mut found = 0usize;
        let mut precision_sum = 0.0;
        for (i, &g) in ranking.iter().take(r).enumerate() {
            if gallery_labels[g] == label {
                found += 1;
                precision_sum += found as f64 / (i + 1) as f64;
            }
        }
        ap_sum += precision_sum / r as f64;
    }
    let nq = rankings.len().max(1) as f64;
    Retrieval {
        queries: rankings.len(),
        gallery: gallery_labels.len(),
        top_k: hits_at
            .into_iter()
            .map(|(k, n)| (k, n as f64 / nq))
            .collect(),
        map_at_r: if with_match == 0 {
            0.0
        } else {
            ap_sum / with_match as f64
        },
        without_match: rankings.len() - with_match,
    }
}

/// Exact evaluation of query embeddings against gallery embeddings.
pub fn evaluate(
    queries: &Tensor,
    gallery: &Tensor,
    query_labels: &[usize],
    gallery_labels: &[usize],
    ks: &[usize],
) -> candle_core::Result<Retrieval> {
    let depth = depth_needed(gallery_labels, ks);
    let ranked = exact_top_k(queries, gallery, depth)?;
    let rankings: Vec<Vec<usize>> = ranked
        .iter()
        .map(|hits| hits.iter().map(|h| h.index).collect())
        .collect();
    Ok(score_rankings(&rankings, query_labels, gallery_labels, ks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gallery_no_larger_than_k_gets_a_note_naming_the_k_that_cannot_miss() {
        let note = saturation_note(12, &REPORTED_K).expect("12 images");
        assert!(
            note.contains("only 12 images") && note.contains("top-20, top-50 count"),
            "{note}"
        );
        assert!(!note.contains("top-10"), "{note}");
        let note = saturation_note(20, &REPORTED_K).expect("20 images");
        assert!(note.contains("top-20, top-50"), "{note}");
        let note = saturation_note(21, &REPORTED_K).expect("21 images");
        assert!(
            note.contains("top-50 counts") && !note.contains("top-20"),
            "{note}"
        );
        assert_eq!(saturation_note(51, &REPORTED_K), None);
    }

    #[test]
    fn query_outcomes_rank_the_true_item_like_the_exact_ranking() {
        let dev = Device::Cpu;
        // Gallery: rows along four directions; query 0 is nearest row 2 (item 7),
        // its item (5) is row 1, second; query 1's item has no gallery image.
        let g = Tensor::new(&[[1f32, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], &dev).expect("g");
        let q = Tensor::new(&[[0.9f32, 0.436], [0.0, 1.0]], &dev).expect("q");
        let out = query_outcomes(&q, &g, &[5, 9], &[3, 5, 7, 8], 2).expect("outcomes");
        let exact = exact_top_k(&q, &g, 4).expect("exact");
        assert_eq!(out[0].top[..], exact[0][..2]);
        assert_eq!(out[0].true_hit.map(|h| h.index), Some(1));
        let pos = exact[0]
            .iter()
            .position(|h| h.index == 1)
            .expect("in ranking");
        assert_eq!(out[0].rank, Some(pos + 1));
        assert_eq!(out[1].rank, None);
    }

    #[test]
    fn nan_scores_rank_last_and_never_break_the_sort() {
        let mut scores = vec![0.5f32, f32::NAN, 0.9, f32::NAN, -0.2, 0.9];
        scores.extend((0..200).map(|i| {
            if i % 7 == 0 {
                f32::NAN
            } else {
                i as f32 / 400.0
            }
        }));
        let hits = top_k_of_row(&scores, scores.len());
        assert_eq!(hits.len(), scores.len());
        let first_nan = hits.iter().position(|h| h.score.is_nan()).expect("nan");
        assert!(hits[first_nan..].iter().all(|h| h.score.is_nan()));
        assert!(
            hits[..first_nan]
                .windows(2)
                .all(|w| w[0].score >= w[1].score)
        );
        assert_eq!(top_k_of_row(&scores, 2)[0].index, 2);
    }

    #[test]
    fn hand_computed_toy_case_with_ties_and_an_unmatched_query() {
        // Gallery labels: items 7, 8, 7, 9. Query rankings written by hand.
        let gallery = [7, 8, 7, 9];
        let rankings = vec![
            vec![0, 1, 2, 3], // item 7: hit at rank 1; R=2, top-2 = [7, 8] → AP = (1/1)/2
            vec![1, 3, 0, 2], // item 7: first hit at rank 3; R=2 → top-2 [1,3] has none → 0
            vec![3, 1, 0, 2], // item 9: hit at rank 1; R=1 → 1
            vec![0, 1, 2, 3], // item 5: no gallery image → miss, excluded from MAP@R
        ];
        let r = score_rankings(&rankings, &[7, 7, 9, 5], &gallery, &[1, 2, 3]);
        assert_eq!(r.at(1), 2.0 / 4.0);
        assert_eq!(r.at(2), 2.0 / 4.0);
        assert_eq!(r.at(3), 3.0 / 4.0);
        assert_eq!(r.without_match, 1);
        assert!((r.map_at_r - (0.5 + 0.0 + 1.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ties_rank_lower_index_first_and_exact_matches_naive() {
        let scores = [0.5, 0.9, 0.5, 0.9, 0.1];
        let idx: Vec<usize> = top_k_of_row(&scores, 4).iter().map(|h| h.index).collect();
        assert_eq!(idx, vec![1, 3, 0, 2]);
        let q = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).expect("q");
        let g = Tensor::new(&[[0.6f32, 0.8], [1.0, 0.0], [0.0, 1.0]], &Device::Cpu).expect("g");
        let top = exact_top_k(&q, &g, 2).expect("top");
        assert_eq!(top[0][0].index, 1);
        assert_eq!(top[0][1].index, 0);
        assert_eq!(top[1][0].index, 2);
        assert!((top[1][1].score - 0.8).abs() < 1e-6);
    }
}
