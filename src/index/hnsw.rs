//! The approximate-nearest-neighbour graph: built, dumped and reloaded with
//! [hnsw_rs], searched through a flat copy.
//!
//! - **Distance**: [`UnitCosine`], `1 − a·b` clamped to `[0, 2]` on unit vectors, with
//!   the kernels crate's 16-accumulator [`dot`] (hnsw_rs's `DistDot` panics when
//!   rounding pushes a dot product of unit vectors past 1).
//! - **Build**: `index.builder`: vitrine's own parallel inserter
//!   ([`super::hnsw_insert`], the default, ~4× faster) or hnsw_rs insertion; both
//!   parallel on the rayon pool (not deterministic, so [`self_recall`] is checked after
//!   every build) and both filed in hnsw_rs's dump ([`write_dump`] for vitrine's).
//! - **Files**: hnsw_rs's own dump (`<basename>.hnsw.graph` + `<basename>.hnsw.data`);
//!   `file_dump` may choose another basename than asked, so the one it returns is kept.
//! - **Search**: a reloaded hnsw_rs index borrows its `HnswIo` and searches through
//!   locks, hash sets and reference counts; [`Graph`] copies the adjacency out once
//!   (layer 0 in one strided `u32` array, upper layers per node) and searches it over the
//!   caller's contiguous vectors with a generation-tagged visited list, several times
//!   faster. Both walk the same graph. Searches on 8-bit codes take
//!   [`super::walk::search_codes`], the same steps laid out for memory latency.
//!
//! hnsw_rs logs through the `log` crate (never installed here: silent) and prints to
//! stdout only on paths this module avoids (unopenable dump files, which are checked
//! first; `max_nb_connection > 256`, refused by [`GraphParams::validate`]).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::Path;

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use rayon::prelude::*;

use super::hnsw_dump::{self, Expected, MAX_LAYERS};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{}: cannot write the HNSW graph: {message}", dir.display())]
    Dump {
        dir: std::path::PathBuf,
        message: String,
    },
    #[error("{}: cannot read the HNSW graph `{basename}`: {message}", dir.display())]
    Load {
        dir: std::path::PathBuf,
        basename: String,
        message: String,
    },
    #[error("invalid HNSW setting: {0}")]
    Params(String),
}

/// The index's dot products: `vitrine_kernels::dot`, through the kernels' one SIMD
/// dispatch (AVX-512 / AVX2 + FMA where the CPU has them).
pub use vitrine_kernels::dot::{dot, dot_i8};

/// Cosine distance between unit vectors, `1 − a·b` clamped to `[0, 2]`.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).clamp(0.0, 2.0)
    }
}

/// The hnsw_rs index type vitrine builds.
pub type HnswIndex<'b> = Hnsw<'b, f32, UnitCosine>;

/// Construction settings (recorded in the index header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GraphParams {
    /// Links per node on upper layers (layer 0 keeps up to `2·m`).
    pub m: usize,
    /// Beam width while inserting.
    pub ef_construction: usize,
}

impl GraphParams {
    pub fn validate(&self) -> Result<(), GraphError> {
        if !(2..=128).contains(&self.m) {
            return Err(GraphError::Params(format!(
                "m = {} must be between 2 and 128",
                self.m
            )));
        }
        if self.ef_construction < self.m {
            return Err(GraphError::Params(format!(
                "ef_construction = {} must be at least m = {}",
                self.ef_construction, self.m
            )));
        }
        Ok(())
    }
}

/// A new, empty hnsw_rs index sized for `capacity` points.
pub fn new_index<'b>(params: GraphParams, capacity: usize) -> Result<HnswIndex<'b>, GraphError> {
    params.validate()?;
    Ok(Hnsw::new(
        params.m,
        capacity.max(1),
        MAX_LAYERS,
        params.ef_construction,
        UnitCosine,
    ))
}

/// Inserts rows `rows` of `data` (row-major, `dim` wide) with ids `first_id + i`;
/// in parallel on the rayon pool when `parallel`.
pub fn insert_rows(
    index: &HnswIndex<'_>,
    data: &[f32],
    dim: usize,
    first_id: usize,
    parallel: bool,
) {
    let rows: Vec<(&[f32], usize)> = data
        .chunks_exact(dim.max(1))
        .enumerate()
        .map(|(i, r)| (r, first_id + i))
        .collect();
    if parallel && rows.len() > 1 {
        // Seed the graph serially so the parallel phase starts from a connected core.
        let seed = rows.len().min(64);
        for &r in &rows[..seed] {
            index.insert_slice(r);
        }
        rows[seed..].par_iter().for_each(|&r| index.insert_slice(r));
    } else {
        for &r in &rows {
            index.insert_slice(r);
        }
    }
}

/// Dumps `index` into `dir` (which must exist) under `basename`; returns the basename
/// hnsw_rs actually used (it picks a new one rather than overwrite some files).
pub fn dump(index: &HnswIndex<'_>, dir: &Path, basename: &str) -> Result<String, GraphError> {
    let err = |message: String| GraphError::Dump {
        dir: dir.to_path_buf(),
        message,
    };
    if !dir.is_dir() {
        return Err(err("not a directory".into()));
    }
    if index.get_nb_point() == 0 {
        return Err(err("the graph is empty".into()));
    }
    index
        .file_dump(dir, basename)
        .map_err(|e| err(e.to_string()))
}

/// Reloads a dump and hands the index to `f` (the index borrows its loader, so it
/// lives only inside this call). hnsw_rs's loader trusts its input (it asserts,
/// sizes allocations from the file, even exits), so it sees only a dump that
/// [`read_graph`] has read and checked against `expected`.
pub fn with_loaded<R>(
    dir: &Path,
    basename: &str,
    expected: Expected,
    f: impl FnOnce(&HnswIndex<'_>) -> R,
) -> Result<R, GraphError> {
    let err = |message: String| GraphError::Load {
        dir: dir.to_path_buf(),
        basename: basename.to_string(),
        message,
    };
    read_graph(dir, basename, expected).map_err(|(file, m)| err(format!("{file}: {m}")))?;
    let mut io = HnswIo::new(dir, basename);
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        io.load_hnsw::<f32, UnitCosine>()
            .map(|index| f(&index))
            .map_err(|e| e.to_string())
    }));
    match loaded {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(message)) => Err(err(message)),
        Err(_) => Err(err("malformed dump".into())),
    }
}

/// Reads and checks the dump `basename` in `dir` ([`hnsw_dump::read`], which trusts
/// nothing in it) into a searchable [`Graph`]; an error names the file at fault.
pub fn read_graph(
    dir: &Path,
    basename: &str,
    expected: Expected,
) -> Result<Graph, (String, String)> {
    let links = hnsw_dump::read(dir, basename, expected)?;
    Graph::from_dump(links).map_err(|m| {
        let [graph_file, _] = hnsw_dump::dump_files(basename);
        (graph_file, m)
    })
}

/// Writes `graph` over `data` (node `i` is row `i`, `dim` wide) as hnsw_rs's dump
/// `<basename>.hnsw.graph` + `.hnsw.data` in `dir` ([`hnsw_dump::write`]), which
/// hnsw_rs loads as an index of [`UnitCosine`].
pub fn write_dump(
    dir: &Path,
    basename: &str,
    graph: &Graph,
    data: &[f32],
    dim: usize,
    ef_construction: usize,
) -> std::io::Result<()> {
    hnsw_dump::write(
        dir,
        basename,
        &graph.to_links(),
        data,
        dim,
        ef_construction,
        std::any::type_name::<UnitCosine>(),
    )
}

/// A total order on `f32` scores for the heaps (NaN sorts lowest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scored(pub(crate) f32, pub(crate) u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = if self.0.is_nan() {
            f32::NEG_INFINITY
        } else {
            self.0
        };
        let b = if other.0.is_nan() {
            f32::NEG_INFINITY
        } else {
            other.0
        };
        a.total_cmp(&b).then(other.1.cmp(&self.1))
    }
}

/// Points already seen by one search: a tag per node, cleared by bumping the tag.
#[derive(Debug, Default)]
pub struct Visited {
    tags: Vec<u16>,
    current: u16,
}

impl Visited {
    pub(crate) fn start(&mut self, n: usize) {
        if self.tags.len() < n {
            self.tags.resize(n, 0);
        }
        self.current = self.current.wrapping_add(1);
        if self.current == 0 {
            self.tags.fill(0);
            self.current = 1;
        }
    }

    /// Marks `id`; true when it was not seen before.
    #[inline]
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        let t = &mut self.tags[id as usize];
        if *t == self.current {
            false
        } else {
            *t = self.current;
            true
        }
    }
}

/// A searchable copy of an hnsw_rs graph. Node ids are the data ids given at insertion
/// (rows of the index's matrix).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    n: usize,
    /// Links per node on the upper layers (hnsw_rs's `max_nb_connection`).
    m: usize,
    /// Layer-0 links: `stride` slots per node, the first holding the count.
    level0: Vec<u32>,
    stride: usize,
    /// Links on layers `1..=level(node)`: `upper[node][layer - 1]`.
    upper: Vec<Vec<Vec<u32>>>,
    entry: u32,
    top_level: usize,
}

impl Graph {
    /// Copies the graph out of an hnsw_rs index whose data ids are `0..n`.
    pub fn from_hnsw(index: &HnswIndex<'_>) -> Result<Self, String> {
        let n = index.get_nb_point();
        if n == 0 {
            return Ok(Self::default());
        }
        let m = usize::from(index.get_max_nb_connection());
        let mut lists = Vec::with_capacity(n);
        let mut entry = None::<(usize, u32)>;
        for point in index.get_point_indexation() {
            let id = point.get_origin_id();
            let level = usize::from(point.get_point_id().0);
            let hood = point.get_neighborhood_id();
            let per_layer: Vec<Vec<u32>> = hood
                .iter()
                .take(level + 1)
                .map(|layer| layer.iter().map(|nb| nb.get_origin_id() as u32).collect())
                .collect();
            if hood.iter().flatten().any(|nb| nb.get_origin_id() >= n) {
                return Err(format!("node {id} links outside 0..{n}"));
            }
            if entry.is_none_or(|(l, _)| level > l) && id < n {
                entry = Some((level, id as u32));
            }
            lists.push((id, per_layer));
        }
        let (top_level, entry) = entry.ok_or("the graph has no nodes")?;
        Self::from_links(n, m, lists, entry, top_level)
    }

    /// The graph a checked dump holds.
    pub fn from_dump(links: hnsw_dump::Links) -> Result<Self, String> {
        Self::from_links(
            links.nodes,
            links.m,
            links.lists,
            links.entry,
            links.top_level,
        )
    }

    /// The graph of `n` nodes from `(node id, links per layer from 0)` lists, with
    /// every id checked against `n`.
    pub(crate) fn from_links(
        n: usize,
        m: usize,
        lists: Vec<(usize, Vec<Vec<u32>>)>,
        entry: u32,
        top_level: usize,
    ) -> Result<Self, String> {
        if n == 0 {
            return Ok(Self::default());
        }
        if entry as usize >= n {
            return Err(format!("entry point {entry} is outside 0..{n}"));
        }
        let mut by_id: Vec<Option<Vec<Vec<u32>>>> = vec![None; n];
        for (id, links) in lists {
            if id >= n {
                return Err(format!("node id {id} is outside 0..{n}"));
            }
            if let Some(&bad) = links.iter().flatten().find(|&&nb| nb as usize >= n) {
                return Err(format!("link to node {bad} is outside 0..{n}"));
            }
            if by_id[id].replace(links).is_some() {
                return Err(format!("node id {id} appears twice"));
            }
        }
        let width = by_id
            .iter()
            .flatten()
            .filter_map(|l| l.first().map(Vec::len))
            .max()
            .unwrap_or(0)
            .max(2 * m);
        let stride = width + 1;
        let mut level0 = vec![0u32; n * stride];
        let mut upper = vec![Vec::new(); n];
        for (id, l) in by_id.into_iter().enumerate() {
            let Some(mut l) = l else {
                return Err(format!("node {id} is missing"));
            };
            let slot = &mut level0[id * stride..(id + 1) * stride];
            if let Some(first) = l.first() {
                slot[0] = first.len() as u32;
                slot[1..=first.len()].copy_from_slice(first);
            }
            if l.len() > 1 {
                upper[id] = l.split_off(1);
            }
        }
        Ok(Self {
            n,
            m,
            level0,
            stride,
            upper,
            entry,
            top_level,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    #[inline]
    pub(crate) fn links0(&self, id: u32) -> &[u32] {
        let s = id as usize * self.stride;
        let count = self.level0[s] as usize;
        &self.level0[s + 1..s + 1 + count]
    }

    /// Asks the CPU to start loading `id`'s layer-0 link list (a hint).
    #[inline]
    pub(crate) fn prefetch_links0(&self, id: u32) {
        let s = id as usize * self.stride;
        if let Some(slot) = self.level0.get(s..s + self.stride) {
            vitrine_kernels::dot::prefetch(slot);
        }
    }

    /// The adjacency as a dump holds it (every node's links on its layers).
    pub fn to_links(&self) -> hnsw_dump::Links {
        let lists = (0..self.n as u32)
            .map(|id| {
                let layers = (0..=self.level(id))
                    .map(|l| self.links(id, l).to_vec())
                    .collect();
                (id as usize, layers)
            })
            .collect();
        hnsw_dump::Links {
            nodes: self.n,
            m: self.m,
            lists,
            entry: self.entry,
            top_level: self.top_level,
        }
    }

    /// Links per node on the upper layers (layer 0 keeps up to `2·m`).
    pub fn m(&self) -> usize {
        self.m
    }

    /// The top layer of node `id` (it has links on layers `0..=level`).
    pub fn level(&self, id: u32) -> usize {
        self.upper[id as usize].len()
    }

    /// The entry point and its layer.
    pub fn entry(&self) -> (u32, usize) {
        (self.entry, self.top_level)
    }

    /// The links of `id` on `layer` (empty above its level).
    pub fn links(&self, id: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            return self.links0(id);
        }
        self.upper[id as usize]
            .get(layer - 1)
            .map_or(&[], Vec::as_slice)
    }

    /// Greedy descent through the upper layers from the entry point: the layer-1 node
    /// (and its score) where the layer-0 search starts. `score(ids, out)` puts the
    /// scores of `ids` (higher is closer) into `out`, so a caller can score a node's
    /// links as one batch.
    pub(crate) fn descend<S: PartialOrd + Copy>(
        &self,
        mut score: impl FnMut(&[u32], &mut Vec<S>),
        out: &mut Vec<S>,
    ) -> (u32, S) {
        let mut cur = self.entry;
        score(&[cur], out);
        let mut cur_s = out[0];
        for layer in (1..=self.top_level).rev() {
            loop {
                let links = self.links(cur, layer);
                score(links, out);
                let mut changed = false;
                for (&nb, &s) in links.iter().zip(out.iter()) {
                    if s > cur_s {
                        cur_s = s;
                        cur = nb;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        (cur, cur_s)
    }

    /// The `ef` best nodes found for the query whose score of node `id` (higher is
    /// closer, e.g. a dot product) is `score(id)`; best first.
    pub fn search(
        &self,
        score: impl Fn(u32) -> f32,
        ef: usize,
        visited: &mut Visited,
    ) -> Vec<(u32, f32)> {
        if self.n == 0 || ef == 0 {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let (cur, cur_s) = self.descend(
            |ids, out: &mut Vec<f32>| {
                out.clear();
                out.extend(ids.iter().map(|&id| score(id)));
            },
            &mut buf,
        );
        visited.start(self.n);
        visited.insert(cur);
        let mut candidates = BinaryHeap::with_capacity(ef * 2);
        let mut top = BinaryHeap::with_capacity(ef + 1);
        candidates.push(Scored(cur_s, cur));
        top.push(std::cmp::Reverse(Scored(cur_s, cur)));
        let mut worst = cur_s;
        while let Some(Scored(s, c)) = candidates.pop() {
            if s < worst && top.len() >= ef {
                break;
            }
            for &nb in self.links0(c) {
                if !visited.insert(nb) {
                    continue;
                }
                let sn = score(nb);
                if top.len() < ef || sn > worst {
                    candidates.push(Scored(sn, nb));
                    top.push(std::cmp::Reverse(Scored(sn, nb)));
                    if top.len() > ef {
                        top.pop();
                    }
                    if let Some(std::cmp::Reverse(w)) = top.peek() {
                        worst = w.0;
                    }
                }
            }
        }
        let mut out: Vec<(u32, f32)> = top
            .into_iter()
            .map(|std::cmp::Reverse(Scored(s, id))| (id, s))
            .collect();
        out.sort_by_key(|&(id, s)| std::cmp::Reverse(Scored(s, id)));
        out
    }
}

/// Share of `sample` rows of `data` that find themselves (or an identical vector) at
/// the top of a graph search with beam `ef`.
pub fn self_recall(graph: &Graph, data: &[f32], dim: usize, sample: usize, ef: usize) -> f64 {
    let n = graph.len();
    if n == 0 || dim == 0 {
        return 1.0;
    }
    let sample = sample.clamp(1, n);
    let step = n as f64 / sample as f64;
    let found = (0..sample)
        .into_par_iter()
        .map_init(Visited::default, |visited, i| {
            let id = ((i as f64 * step) as usize).min(n - 1);
            let q = &data[id * dim..(id + 1) * dim];
            let own = dot(q, q);
            let hits = graph.search(
                |j| dot(q, &data[j as usize * dim..(j as usize + 1) * dim]),
                ef,
                visited,
            );
            usize::from(
                hits.first()
                    .is_some_and(|&(j, s)| j as usize == id || s >= own - 1e-6),
            )
        })
        .sum::<usize>();
    found as f64 / sample as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_and_distance_is_clamped() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
        let u = [1.000_001f32, 0.0];
        assert_eq!(UnitCosine.eval(&u, &u), 0.0);
        assert_eq!(UnitCosine.eval(&[1.0, 0.0], &[-1.000_001, 0.0]), 2.0);
    }
}
