//! The exact scan of one query over every row (`vitrine search --exact`, the
//! search bench's exact rows, the fallback of an index without its graph).
//!
//! It is a pass over the whole gallery (205 MB for 100,000 × 512), so it is bound by
//! how fast memory is read, not by arithmetic: rows are scored a block at a time by
//! [`dot_consecutive`] (four rows per pass over the query) straight into a running
//! top-k, so no score row is ever stored or sorted, and a large gallery is cut into
//! row ranges scanned on the rayon pool's threads (one thread saturates less of
//! the memory bandwidth than several), whose top-k lists are merged. Each score is
//! computed exactly as [`super::hnsw::dot`] would (bit for bit), so the ranking is the
//! one a score-every-row-then-sort scan gives.

use rayon::prelude::*;
use vitrine_kernels::scan::dot_consecutive;

use crate::eval::{Hit, TopK, top_k_of_row, topk::running_pays};

/// Rows scored per kernel call (their scores live on the stack).
const BLOCK: usize = 256;

/// Bytes of rows below which a range is not worth a task of its own (~0.1 ms of
/// reading: far above rayon's cost to hand it out).
const MIN_TASK_BYTES: usize = 1 << 20;

/// Ranges per thread: a few, so a thread slowed by other work on the machine hands
/// its share to the others (work stealing) instead of holding up the merge.
const TASKS_PER_THREAD: usize = 4;

/// Rows per task for `n` rows of `dim` values on `threads` threads.
fn task_rows(n: usize, dim: usize, threads: usize) -> usize {
    let min_rows = (MIN_TASK_BYTES / (4 * dim.max(1))).max(BLOCK);
    n.div_ceil(threads.max(1) * TASKS_PER_THREAD).max(min_rows)
}

/// Cosine scores of `q` with rows `first..` of `rows` (`dim` values each) into
/// `out`: `dot · q_inv · inv_norms[row]`, in that order of operations.
fn cosines(q: &[f32], q_inv: f32, rows: &[f32], inv_norms: &[f32], out: &mut [f32]) {
    dot_consecutive(q, rows, out);
    for (s, &inv) in out.iter_mut().zip(inv_norms) {
        *s = *s * q_inv * inv;
    }
}

/// The running top-`k` of the rows `data` (starting at row `first`).
fn scan_range(
    q: &[f32],
    q_inv: f32,
    data: &[f32],
    inv_norms: &[f32],
    first: usize,
    k: usize,
) -> TopK {
    let dim = q.len();
    let mut top = TopK::new(k);
    let mut buf = [0f32; BLOCK];
    for (b, (rows, inv)) in data
        .chunks(BLOCK * dim)
        .zip(inv_norms.chunks(BLOCK))
        .enumerate()
    {
        let out = &mut buf[..inv.len()];
        cosines(q, q_inv, rows, inv, out);
        top.push_row(first + b * BLOCK, out);
    }
    top
}

/// Top `k` rows of `data` (`q.len()` values per row, `inv_norms[i]` = 1 / ‖row i‖)
/// by cosine with `q` (`q_inv` = 1 / ‖q‖): score descending, ties by the lower row.
pub fn top_k(q: &[f32], q_inv: f32, data: &[f32], inv_norms: &[f32], k: usize) -> Vec<Hit> {
    let dim = q.len();
    let n = inv_norms.len();
    if k == 0 || n == 0 || dim == 0 {
        return Vec::new();
    }
    let data = &data[..n * dim];
    let per_task = task_rows(n, dim, rayon::current_num_threads());
    if !running_pays(k, n) {
        // Most rows are kept: score them all, then select.
        let mut scores = vec![0f32; n];
        scores
            .par_chunks_mut(per_task)
            .zip(data.par_chunks(per_task * dim))
            .zip(inv_norms.par_chunks(per_task))
            .for_each(|((out, rows), inv)| cosines(q, q_inv, rows, inv, out));
        return top_k_of_row(&scores, k);
    }
    if per_task >= n {
        return scan_range(q, q_inv, data, inv_norms, 0, k).into_sorted();
    }
    data.par_chunks(per_task * dim)
        .zip(inv_norms.par_chunks(per_task))
        .enumerate()
        .map(|(t, (rows, inv))| scan_range(q, q_inv, rows, inv, t * per_task, k))
        .reduce(
            || TopK::new(k),
            |mut a, b| {
                a.merge(b);
                a
            },
        )
        .into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::dot;

    /// Every score, then a full sort: the scan's reference.
    fn reference(q: &[f32], q_inv: f32, data: &[f32], inv: &[f32], k: usize) -> Vec<Hit> {
        let dim = q.len();
        let mut hits: Vec<Hit> = inv
            .iter()
            .enumerate()
            .map(|(i, &r)| Hit {
                index: i,
                score: dot(q, &data[i * dim..(i + 1) * dim]) * q_inv * r,
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        hits.truncate(k);
        hits
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.range_f32(-1.0, 1.0)).collect()
    }

    fn bits(h: &[Hit]) -> Vec<(usize, u32)> {
        h.iter().map(|h| (h.index, h.score.to_bits())).collect()
    }

    fn check(data: &[f32], dim: usize, q: &[f32], ks: &[usize]) {
        let n = data.len() / dim;
        let inv: Vec<f32> = data
            .chunks_exact(dim)
            .map(|r| {
                let s = dot(r, r).sqrt();
                if s > 0.0 { 1.0 / s } else { 0.0 }
            })
            .collect();
        let q_inv = 1.0 / dot(q, q).sqrt();
        for &k in ks {
            let want = reference(q, q_inv, data, &inv, k);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let got = pool.install(|| top_k(q, q_inv, data, &inv, k));
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "n {n} dim {dim} k {k} threads {threads}"
                );
            }
        }
    }

    #[test]
    fn scan_equals_score_all_then_sort() {
        // Several tasks (1 MiB of rows each at least), a last block and a last group of
        // four rows cut short, dims with and without a tail past 16.
        for (n, dim) in [
            (0, 8),
            (1, 8),
            (3, 17),
            (1000, 16),
            (2 * 8192 + 7, 32),
            (3001, 100),
        ] {
            let data = values(n * dim, n as u64 + 1);
            let q = values(dim, 99);
            check(&data, dim, &q, &[0, 1, 5, 20, 256, 257, n / 2, n, n + 3]);
        }
    }

    #[test]
    fn ties_and_duplicate_rows_rank_by_the_lower_row() {
        // Rows repeat every 7, so every score ties with its copies across blocks and
        // task ranges; zero rows score 0 (inv norm 0), and two near-ties differ in the
        // last bit.
        let dim = 24;
        let n = 20_011;
        let base = values(7 * dim, 5);
        let mut data: Vec<f32> = (0..n)
            .flat_map(|i| base[(i % 7) * dim..(i % 7 + 1) * dim].to_vec())
            .collect();
        for i in (0..n).step_by(13) {
            data[i * dim..(i + 1) * dim].fill(0.0);
        }
        data[5 * dim] = f32::from_bits(data[5 * dim].to_bits() + 1);
        let q = base[..dim].to_vec();
        check(&data, dim, &q, &[1, 3, 10, 100, 256, 3000, n]);
    }

    #[test]
    fn task_ranges_cover_large_galleries_on_every_thread() {
        assert_eq!(task_rows(100_000, 512, 2), 12_500);
        assert_eq!(task_rows(100_000, 512, 1), 25_000);
        // Small galleries: one range of at least 1 MiB.
        assert_eq!(task_rows(1000, 512, 8), 512);
        assert!(task_rows(10, 0, 0) >= BLOCK);
    }
}
