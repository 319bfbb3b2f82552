//! Test vectors shaped like product embeddings: many tight clusters of unit vectors
//! (the images of one product), the clusters themselves grouped (the products of one
//! category), for index tests and `vitrine bench search`.

use rayon::prelude::*;

use super::npy::Matrix;
use crate::rng::Rng;

/// The shape of a clustered set. The same `seed` gives the same cluster centres, so
/// base vectors and queries drawn with different `part`s share their clusters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterSpec {
    pub dim: usize,
    pub clusters: usize,
    /// Clusters per group (category); 0 = no grouping.
    pub group_size: usize,
    /// Norm of the noise added to a unit cluster centre before normalising (0.5 ≈
    /// cosine 0.9 between a vector and its centre, 0.8 between two of one cluster).
    pub spread: f32,
    /// Norm of a cluster centre's offset from its group's centre (1.0 ≈ cosine 0.5
    /// between centres of one group).
    pub group_spread: f32,
    pub seed: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            dim: 512,
            clusters: 1000,
            group_size: 50,
            spread: 0.5,
            group_spread: 1.0,
            seed: 1,
        }
    }
}

fn gaussian(rng: &mut Rng, dim: usize, norm: f32) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
    let len = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x * norm / len).collect()
}

fn normalize(v: &mut [f32]) {
    let len = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v {
        *x /= len;
    }
}

/// Unit cluster centres of `spec`.
pub fn centres(spec: &ClusterSpec) -> Vec<Vec<f32>> {
    let groups = if spec.group_size == 0 {
        0
    } else {
        spec.clusters.div_ceil(spec.group_size)
    };
    let group_centres: Vec<Vec<f32>> = (0..groups)
        .map(|g| gaussian(&mut Rng::derive(spec.seed, &[1, g as u64]), spec.dim, 1.0))
        .collect();
    (0..spec.clusters.max(1))
        .into_par_iter()
        .map(|c| {
            let mut rng = Rng::derive(spec.seed, &[2, c as u64]);
            let mut v = if groups == 0 {
                gaussian(&mut rng, spec.dim, 1.0)
            } else {
                let g = &group_centres[c / spec.group_size.max(1)];
                let off = gaussian(&mut rng, spec.dim, spec.group_spread);
                g.iter().zip(off).map(|(a, b)| a + b).collect()
            };
            normalize(&mut v);
            v
        })
        .collect()
}

/// `n` unit vectors around the centres (vector `i` of part `part` in cluster drawn
/// uniformly); parts with different numbers are independent draws.
pub fn vectors(spec: &ClusterSpec, n: usize, part: u64) -> Matrix {
    let centres = centres(spec);
    let rows: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::derive(spec.seed, &[3, part, i as u64]);
            let c = &centres[rng.below(centres.len())];
            let noise = gaussian(&mut rng, spec.dim, spec.spread);
            let mut v: Vec<f32> = c.iter().zip(noise).map(|(a, b)| a + b).collect();
            normalize(&mut v);
            v
        })
        .collect();
    Matrix {
        rows: n,
        cols: spec.dim,
        data: rows.concat(),
    }
}
