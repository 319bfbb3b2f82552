//! BatchNorm (+ ReLU) on channels-last data `(rows, C)`: batch statistics, the
//! affine map they give, and the closed-form backward.
//!
//! [`batch_stats`] computes the per-channel mean and biased variance in one pass
//! (shifted by the first row, summed in f32 blocks of [`BLOCK_ROWS`] rows and in f64
//! across blocks, in a fixed grouping so results do not depend on the thread count);
//! [`Stats::affine`] turns them with `γ, β` into the per-channel `(scale, shift)` that
//! [`crate::elementwise::apply`] applies (ReLU optional). [`backward`] is
//! `dx = γ·σ⁻¹·(g − mean(g) − x̂·mean(g·x̂))` with `g` the output gradient masked where
//! the ReLU (recomputed from `x`) was zero, `dγ = Σ g·x̂`, `dβ = Σ g`; with fixed
//! statistics (eval mode, frozen layers) `dx` is the plain per-channel scale.
//! Running statistics are the caller's business (they live with the model).

use std::borrow::Cow;

use rayon::prelude::*;

use crate::Error;
use crate::buffer::par_vec_from;
use crate::elementwise::TASK_ROWS;
use crate::simd::vectorized;

/// The per-channel statistics a BatchNorm normalises with.
#[derive(Debug, Clone)]
pub struct Stats {
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    pub invstd: Vec<f64>,
    /// The batch's biased variance (train mode), for the running statistics.
    pub var: Vec<f64>,
    /// Values per channel the statistics came from.
    pub count: usize,
}

impl Stats {
    /// `(scale, shift)` with `y = x·scale + shift`.
    pub fn affine(&self, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&self.invstd)
            .map(|(&g, &s)| g * s as f32)
            .collect();
        let shift = beta
            .iter()
            .zip(&self.mean)
            .zip(&scale)
            .map(|((&b, &m), &a)| b - m * a)
            .collect();
        (scale, shift)
    }

    /// Fixed statistics from running ones (eval mode): `mean`, the variance `var`
    /// and the BatchNorm's `eps`.
    pub fn from_running(mean: Vec<f32>, var: Vec<f64>, eps: f64) -> Self {
        Self {
            invstd: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
            mean,
            var,
            count: 0,
        }
    }
}

/// Statistics of a channels-last batch `xs` of `c` channels (train mode), with
/// `eps` added to the variance.
pub fn batch_stats(xs: &[f32], c: usize, eps: f64) -> Result<Stats, Error> {
    let count = xs.len() / c.max(1);
    if count < 2 {
        return Err(Error::new(
            "batch-norm in train mode needs more than one value per channel",
        ));
    }
    let (mean, var) = channel_stats(xs, c);
    Ok(Stats {
        mean: mean.iter().map(|&m| m as f32).collect(),
        invstd: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
        var,
        count,
    })
}

/// Rows of channels summed per block in f32 before the block total joins the f64 sum:
/// short enough to keep f32 rounding small, long enough to vectorise across channels.
const BLOCK_ROWS: usize = 64;

/// Independent row ranges summed in parallel; a fixed count (not the thread count) so
/// that the result is the same on every machine and run.
const SUM_GROUPS: usize = 32;

/// Per-channel sums over the rows of a channels-last tensor: `add_row(row, acc)` adds
/// row `row`'s contributions to `acc`, `sums` groups of `c` accumulators. Returns the
/// `sums·c` totals in f64 (blocks of [`BLOCK_ROWS`] rows in f32), deterministic.
fn channel_sums(
    rows: usize,
    c: usize,
    sums: usize,
    add_row: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f64> {
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let per_group = blocks.div_ceil(SUM_GROUPS).max(1);
    let groups: Vec<Vec<f64>> = (0..blocks.div_ceil(per_group))
        .into_par_iter()
        .map(|grp| {
            let mut total = vec![0f64; sums * c];
            let mut acc = vec![0f32; sums * c];
            vectorized(
                #[inline(always)]
                || {
                    for b in grp * per_group..((grp + 1) * per_group).min(blocks) {
                        acc.fill(0.0);
                        for row in b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(rows) {
                            add_row(row, &mut acc);
                        }
                        for (t, &a) in total.iter_mut().zip(&acc) {
                            *t += f64::from(a);
                        }
                    }
                },
            );
            total
        })
        .collect();
    let mut total = vec![0f64; sums * c];
    for g in groups {
        for (t, v) in total.iter_mut().zip(&g) {
            *t += v;
        }
    }
    total
}

/// Per-channel mean and biased variance (f64) of channels-last rows.
fn channel_stats(xs: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = xs.len() / c;
    let count = rows as f64;
    // One pass of Σ(x − p) and Σ(x − p)², shifted by a pivot p per channel (the first
    // row): x − p is of the order of the spread, so E[(x−p)²] − E[x−p]² does not
    // cancel the way E[x²] − E[x]² would.
    let pivot = &xs[..c];
    let sums = channel_sums(rows, c, 2, |r, acc| {
        let (lin, sq) = acc.split_at_mut(c);
        for (((l, s), &v), &p) in lin.iter_mut().zip(sq).zip(&xs[r * c..][..c]).zip(pivot) {
            let d = v - p;
            *l += d;
            *s += d * d;
        }
    });
    (0..c)
        .map(|ci| {
            let shift = sums[ci] / count;
            let mean = f64::from(pivot[ci]) + shift;
            (mean, (sums[c + ci] / count - shift * shift).max(0.0))
        })
        .unzip()
}

/// The gradients of a BatchNorm (+ ReLU) from the output gradient `gs`.
#[derive(Debug, Clone)]
pub struct Grads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// What a BatchNorm's forward did, and which gradients its backward computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardFlags {
    /// A ReLU followed the normalisation (the gradient is masked where it was 0).
    pub relu: bool,
    /// The statistics came from this batch (train mode): `dx` then includes their
    /// dependence on `x`.
    pub batch_stats: bool,
    /// Compute `dx` (otherwise only `dγ` and `dβ`; `dx` is left empty).
    pub need_dx: bool,
}

/// Backward of `y = [max(0,] x·scale + shift [)]` with `stats`: `gs` is masked where
/// the ReLU (recomputed from `xs`, bit for bit the forward's value) was zero; see
/// [`BackwardFlags`]. An owned `gs` becomes `dx` in place (no fresh buffer).
pub fn backward(
    xs: &[f32],
    gs: Cow<'_, [f32]>,
    stats: &Stats,
    (gamma, beta): (&[f32], &[f32]),
    flags: BackwardFlags,
) -> Grads {
    let BackwardFlags {
        relu,
        batch_stats,
        need_dx,
    } = flags;
    let c = gamma.len();
    let rows = xs.len() / c.max(1);
    let count = rows as f64;
    let (scale, shift) = stats.affine(gamma, beta);
    let ch = Channel {
        mean: &stats.mean[..c],
        scale: &scale[..c],
        shift: &shift[..c],
    };
    // Per-channel Σg and Σg·(x − μ), g being dy masked by the ReLU.
    let sums = channel_sums(rows, c, 2, |r, acc| {
        let (xr, gr) = (&xs[r * c..][..c], &gs[r * c..][..c]);
        let (sg, sgx) = acc.split_at_mut(c);
        if relu {
            grad_sums_row::<true>(xr, gr, &ch, sg, sgx);
        } else {
            grad_sums_row::<false>(xr, gr, &ch, sg, sgx);
        }
    });
    let dgamma: Vec<f32> = (0..c)
        .map(|ci| (stats.invstd[ci] * sums[c + ci]) as f32)
        .collect();
    let dbeta: Vec<f32> = sums[..c].iter().map(|&s| s as f32).collect();
    if !need_dx {
        return Grads {
            dx: Vec::new(),
            dgamma,
            dbeta,
        };
    }
    // dx = k·(g − mean(g) − x̂·mean(g·x̂)) = k·g + c1·(x − μ) + c2 per channel.
    let mut k = Vec::with_capacity(c);
    let mut c1 = Vec::with_capacity(c);
    let mut c2 = Vec::with_capacity(c);
    for ci in 0..c {
        let invstd = stats.invstd[ci];
        let kc = f64::from(gamma[ci]) * invstd;
        let (mg, mgx) = if batch_stats {
            (sums[ci] / count, invstd * sums[c + ci] / count)
        } else {
            (0.0, 0.0)
        };
        k.push(kc as f32);
        c1.push((-kc * invstd * mgx) as f32);
        c2.push((-kc * mg) as f32);
    }
    let coef = DxCoef {
        k: &k,
        c1: &c1,
        c2: &c2,
    };
    let task = c * TASK_ROWS;
    // `dc` holds the incoming gradient and takes `dx` in its place.
    let rows_of = |dc: &mut [f32], t: usize| {
        let xc = &xs[t * task..][..dc.len()];
        vectorized(
            #[inline(always)]
            || {
                for (dr, xr) in dc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
                    if relu {
                        dx_row::<true>(dr, xr, &ch, &coef);
                    } else {
                        dx_row::<false>(dr, xr, &ch, &coef);
                    }
                }
            },
        );
    };
    let dx = match gs {
        Cow::Owned(mut dx) => {
            dx.par_chunks_mut(task)
                .enumerate()
                .for_each(|(t, dc)| rows_of(dc, t));
            dx
        }
        // A copy of the gradient, rewritten in place (no zeroing pass).
        Cow::Borrowed(gs) => par_vec_from(gs, task, |t, dc| rows_of(dc, t)),
    };
    Grads { dx, dgamma, dbeta }
}

/// Per-channel values of a BatchNorm's forward (all of the same length).
struct Channel<'a> {
    mean: &'a [f32],
    scale: &'a [f32],
    shift: &'a [f32],
}

/// Per-channel coefficients of the input gradient.
struct DxCoef<'a> {
    k: &'a [f32],
    c1: &'a [f32],
    c2: &'a [f32],
}

/// `g`, or 0 where the ReLU after `x·a + b` (recomputed bit for bit) was zero.
// Inlined into `vectorized`'s target-feature function, so compiled for its ISA.
#[allow(clippy::inline_always)]
#[inline(always)]
fn masked<const RELU: bool>(g: f32, x: f32, a: f32, b: f32) -> f32 {
    if RELU && x * a + b <= 0.0 { 0.0 } else { g }
}

/// One row's contributions to Σg and Σg·(x − μ); written as zips so it vectorises.
// Inlined into `vectorized`'s target-feature function, so compiled for its ISA.
#[allow(clippy::inline_always)]
#[inline(always)]
fn grad_sums_row<const RELU: bool>(
    x: &[f32],
    g: &[f32],
    ch: &Channel,
    sg: &mut [f32],
    sgx: &mut [f32],
) {
    let consts = ch.mean.iter().zip(ch.scale.iter().zip(ch.shift));
    for (((s1, s2), (&x, &g)), (&m, (&a, &b))) in
        sg.iter_mut().zip(sgx).zip(x.iter().zip(g)).zip(consts)
    {
        let g = masked::<RELU>(g, x, a, b);
        *s1 += g;
        *s2 += g * (x - m);
    }
}

/// One row of the input gradient, in place of the incoming gradient `d`.
// Inlined into `vectorized`'s target-feature function, so compiled for its ISA.
#[allow(clippy::inline_always)]
#[inline(always)]
fn dx_row<const RELU: bool>(d: &mut [f32], x: &[f32], ch: &Channel, k: &DxCoef) {
    let consts = ch.mean.iter().zip(ch.scale.iter().zip(ch.shift));
    let coef = k.k.iter().zip(k.c1.iter().zip(k.c2));
    for ((o, &x), ((&m, (&a, &b)), (&kk, (&c1, &c2)))) in d.iter_mut().zip(x).zip(consts.zip(coef))
    {
        *o = masked::<RELU>(*o, x, a, b) * kk + (x - m) * c1 + c2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elementwise::{Affine, apply};
    use crate::testing::values;

    /// `Σ r·y` of a train-mode BatchNorm (+ ReLU) in f64, for numeric gradients.
    fn loss(x: &[f64], gamma: &[f64], beta: &[f64], r: &[f32], relu: bool, eps: f64) -> f64 {
        let c = gamma.len();
        let rows = x.len() / c;
        let mut total = 0.0;
        for ci in 0..c {
            let col: Vec<f64> = (0..rows).map(|i| x[i * c + ci]).collect();
            let mean = col.iter().sum::<f64>() / rows as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
            for (i, v) in col.iter().enumerate() {
                let y = (v - mean) / (var + eps).sqrt() * gamma[ci] + beta[ci];
                let y = if relu { y.max(0.0) } else { y };
                total += y * f64::from(r[i * c + ci]);
            }
        }
        total
    }

    #[test]
    fn batch_stats_are_exact_far_from_zero() {
        let (c, rows) = (3, 1000);
        let x: Vec<f32> = values(c * rows, 1).iter().map(|v| 40.0 + 0.5 * v).collect();
        let s = batch_stats(&x, c, 1e-5).expect("stats");
        assert_eq!(s.count, rows);
        for ci in 0..c {
            let col: Vec<f64> = (0..rows).map(|i| f64::from(x[i * c + ci])).collect();
            let mean = col.iter().sum::<f64>() / rows as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
            assert!((f64::from(s.mean[ci]) - mean).abs() < 1e-5);
            assert!(
                (s.var[ci] - var).abs() < 1e-7 * var.max(1.0),
                "{} {var}",
                s.var[ci]
            );
        }
        assert!(
            batch_stats(&x[..c], c, 1e-5).is_err(),
            "one row has no variance"
        );
    }

    #[test]
    fn backward_matches_numeric_gradients() {
        let (c, rows, eps) = (3, 12, 1e-5);
        let x = values(c * rows, 2);
        let r = values(c * rows, 3);
        let gamma: Vec<f32> = values(c, 4).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = values(c, 5);
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let g64: Vec<f64> = gamma.iter().map(|&v| f64::from(v)).collect();
        let b64: Vec<f64> = beta.iter().map(|&v| f64::from(v)).collect();
        for relu in [false, true] {
            let stats = batch_stats(&x, c, eps).expect("stats");
            let flags = BackwardFlags {
                relu,
                batch_stats: true,
                need_dx: true,
            };
            let grads = backward(&x, Cow::Borrowed(&r), &stats, (&gamma, &beta), flags);
            // The incoming gradient's buffer taking dx in place: the same numbers.
            let owned = backward(&x, Cow::Owned(r.clone()), &stats, (&gamma, &beta), flags);
            assert_eq!(owned.dx, grads.dx);
            assert_eq!(
                (owned.dgamma, owned.dbeta),
                (grads.dgamma.clone(), grads.dbeta.clone())
            );
            let h = 1e-4;
            let numeric = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
            for i in 0..x.len() {
                let d = numeric(&|e| {
                    let mut xp = x64.clone();
                    xp[i] += e;
                    loss(&xp, &g64, &b64, &r, relu, eps)
                });
                assert!(
                    (f64::from(grads.dx[i]) - d).abs() < 1e-3,
                    "dx[{i}] relu {relu}"
                );
            }
            for ci in 0..c {
                let dg = numeric(&|e| {
                    let mut gp = g64.clone();
                    gp[ci] += e;
                    loss(&x64, &gp, &b64, &r, relu, eps)
                });
                let db = numeric(&|e| {
                    let mut bp = b64.clone();
                    bp[ci] += e;
                    loss(&x64, &g64, &bp, &r, relu, eps)
                });
                assert!(
                    (f64::from(grads.dgamma[ci]) - dg).abs() < 1e-3,
                    "dγ relu {relu}"
                );
                assert!(
                    (f64::from(grads.dbeta[ci]) - db).abs() < 1e-3,
                    "dβ relu {relu}"
                );
            }
            // Without dx only the parameter gradients come back, the same ones.
            let flags = BackwardFlags {
                need_dx: false,
                ..flags
            };
            let only = backward(&x, Cow::Borrowed(&r), &stats, (&gamma, &beta), flags);
            assert!(only.dx.is_empty());
            assert_eq!((only.dgamma, only.dbeta), (grads.dgamma, grads.dbeta));
        }
    }

    #[test]
    fn fixed_statistics_backward_is_the_plain_scale() {
        let (c, rows) = (4, 9);
        let x = values(c * rows, 6);
        let g = values(c * rows, 7);
        let (gamma, beta) = (values(c, 8), values(c, 9));
        let stats = Stats::from_running(values(c, 10), vec![0.5; c], 1e-5);
        let flags = BackwardFlags {
            relu: false,
            batch_stats: false,
            need_dx: true,
        };
        let grads = backward(&x, Cow::Borrowed(&g), &stats, (&gamma, &beta), flags);
        let (scale, shift) = stats.affine(&gamma, &beta);
        for i in 0..x.len() {
            assert!((grads.dx[i] - g[i] * scale[i % c]).abs() < 1e-6);
        }
        // The forward these statistics give.
        let f = Affine {
            scale: &scale,
            shift: &shift,
            relu: false,
        };
        let y = apply(&x, &f);
        let xhat = (x[0] - stats.mean[0]) as f64 * stats.invstd[0];
        assert!((f64::from(y[0]) - (xhat * f64::from(gamma[0]) + f64::from(beta[0]))).abs() < 1e-5);
    }
}
