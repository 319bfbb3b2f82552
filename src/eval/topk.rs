//! A running top-k: the `k` best hits seen so far, kept sorted, with the worst one's
//! key as a floor that almost every later score fails with one integer compare. A
//! scan then never holds its scores (a 100,000-row gallery: 1.6 MB of hits to sort
//! or select per query before).

use super::Hit;

/// Largest `k` kept by insertion into the sorted list (each insertion moves up to `k`
/// hits); larger ones select over the whole score row instead.
pub const RUNNING_MAX_K: usize = 256;

/// Whether a running top-`k` pays over selecting among `n` scores: `k` small, and
/// small beside `n` (when most scores enter the list, selection is cheaper).
pub fn running_pays(k: usize, n: usize) -> bool {
    k <= RUNNING_MAX_K && k.saturating_mul(8) <= n
}

/// [`super::rank_order`]'s order of a score as an integer, larger = better: NaN as
/// −∞, then `f32::total_cmp`'s order (its own bit trick), so −0 ranks below +0.
#[inline]
pub fn order_key(score: f32) -> i32 {
    let s = if score.is_nan() {
        f32::NEG_INFINITY
    } else {
        score
    };
    let b = s.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// The best `k` hits pushed so far, in [`super::rank_order`] (score descending, ties
/// by the lower index).
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    /// Best first, with each hit's [`order_key`]; at most `k` long.
    hits: Vec<(i32, Hit)>,
    /// The worst kept key once `k` hits are kept (`i32::MIN` before): a score with a
    /// lower key cannot enter.
    floor: i32,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            hits: Vec::with_capacity(k.min(RUNNING_MAX_K) + 1),
            floor: i32::MIN,
        }
    }

    /// Offers one hit.
    #[inline]
    pub fn push(&mut self, index: usize, score: f32) {
        let key = order_key(score);
        if key >= self.floor {
            self.insert(key, Hit { index, score });
        }
    }

    /// Offers `scores[i]` as hit `first + i`, for every `i`.
    #[inline]
    pub fn push_row(&mut self, first: usize, scores: &[f32]) {
        for (i, &s) in scores.iter().enumerate() {
            self.push(first + i, s);
        }
    }

    fn insert(&mut self, key: i32, hit: Hit) {
        let pos = self
            .hits
            .partition_point(|&(k, h)| k > key || (k == key && h.index < hit.index));
        if pos >= self.k {
            return;
        }
        self.hits.insert(pos, (key, hit));
        self.hits.truncate(self.k);
        if self.hits.len() == self.k {
            self.floor = self.hits[self.k - 1].0;
        }
    }

    /// Adds every hit of `other` (the top-k of another part of the same row).
    pub fn merge(&mut self, other: TopK) {
        for (key, hit) in other.hits {
            if key >= self.floor {
                self.insert(key, hit);
            }
        }
    }

    /// The hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        self.hits.into_iter().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{rank_order, top_k_of_row};
    use super::*;

    fn by_selection(scores: &[f32], k: usize) -> Vec<Hit> {
        let mut hits: Vec<Hit> = scores
            .iter()
            .enumerate()
            .map(|(index, &score)| Hit { index, score })
            .collect();
        hits.sort_by(rank_order);
        hits.truncate(k);
        hits
    }

    fn bits(h: &[Hit]) -> Vec<(usize, u32)> {
        h.iter().map(|h| (h.index, h.score.to_bits())).collect()
    }

    #[test]
    fn order_key_orders_like_rank_order() {
        let v = [
            f32::NAN,
            -f32::NAN,
            f32::NEG_INFINITY,
            -1.0,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-30,
            0.5,
            f32::INFINITY,
        ];
        for &a in &v {
            for &b in &v {
                let (ha, hb) = (Hit { index: 0, score: a }, Hit { index: 0, score: b });
                // rank_order puts the better first: Less means `a` ranks higher.
                assert_eq!(
                    rank_order(&ha, &hb),
                    order_key(b).cmp(&order_key(a)),
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn running_top_k_equals_a_full_sort_with_ties_nans_and_any_k() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as u32
        };
        for n in [0usize, 1, 2, 5, 64, 333] {
            // Few distinct values: many exact ties; some NaN, ±0 and infinities.
            let scores: Vec<f32> = (0..n)
                .map(|_| match next() % 12 {
                    0 => f32::NAN,
                    1 => -0.0,
                    2 => 0.0,
                    3 => f32::NEG_INFINITY,
                    r => (r as f32 - 7.0) / 4.0,
                })
                .collect();
            for k in [0, 1, 2, 3, 10, n, n + 5] {
                let want = by_selection(&scores, k);
                let mut top = TopK::new(k);
                top.push_row(0, &scores);
                assert_eq!(bits(&top.into_sorted()), bits(&want), "n {n} k {k}");
                // In parts, merged in any order.
                let mid = n / 3;
                let (mut a, mut b) = (TopK::new(k), TopK::new(k));
                a.push_row(0, &scores[..mid]);
                b.push_row(mid, &scores[mid..]);
                b.merge(a);
                assert_eq!(bits(&b.into_sorted()), bits(&want), "merged, n {n} k {k}");
                assert_eq!(
                    bits(&top_k_of_row(&scores, k)),
                    bits(&want),
                    "row, n {n} k {k}"
                );
            }
        }
    }
}
