//! vitrine's own parallel HNSW inserter (`index.builder = "vitrine"`, the default):
//! a graph as good as hnsw_rs's at hnswlib's pace.
//!
//! **Profile** of hnsw_rs's build (30k × 512 clustered, m 16, ef_construction 200, 2
//! threads, `perf record -g` of `vitrine bench search`): 43% the kernels' AVX-512
//! distance, 38% `hnsw_rs::Hnsw::search_layer` itself (reference-counted points,
//! read-write locks, hash sets of visited points, a heap allocation per candidate),
//! ~10% malloc/free, hash tables and `Arc` drops; build 23.6 s against hnswlib's 6.5 s.
//!
//! **Here** the graph lives in flat arrays of atomic `u32` (a count, then the links)
//! sized once from levels drawn up front (`⌊−ln U / ln m⌋`, a node's level a function
//! of its id); a search reads a list without locking (every value ever stored is a
//! valid node id, so a list caught mid-update is at worst a little stale), a node's
//! lists change only under that node's mutex, the visited set is a generation-tagged
//! array per thread, and distances go four rows at a time through the kernels'
//! [`dot_rows`] (eight FMA chains, the next rows prefetched). Safe Rust; the
//! intrinsics live in the kernels crate.
//!
//! **The graph** is hnsw_rs's: a new node searches each of its layers with an
//! `ef_construction` beam and keeps what the diversity heuristic (Malkov &
//! Yashunin's, hnswlib's `getNeighborsByHeuristic2`) selects, up to `2·m` on layer 0
//! and `m` above; every selected neighbour links back, and a full list keeps its
//! nearest links (hnsw_rs's reverse update; each link's similarity is stored beside
//! it, so this costs no distance). hnswlib's variant (`m` links for a new node,
//! heuristic re-selection of full lists) built sparser graphs whose recall@20 at equal
//! ef was 0.01 lower than hnsw_rs's on small clustered sets (m 12). After the inserts,
//! every node that a walk from the entry point does not reach (its links in were all
//! dropped by reverse updates; 4–10 of 30k rows per parallel build, 5 of 100k) gets a
//! link from the nearest node that it does reach ([`Shared::reconnect`]): an item
//! with no link in is one no query can return.
//!
//! **Measured** side by side (Intel Xeon, 2 threads, m 16, ef_construction 200,
//! `vitrine bench search` and `benches/peers/hnswlib_bench.py`; recall@20 at ef
//! 40/48/60 with vitrine's search): 30k × 512: vitrine 4.5–4.8 s (0.9983 / 0.9990 /
//! 0.9995), hnsw_rs 17.8–18.5 s (0.9975–0.9986 / 0.9992 / 0.9998), hnswlib 4.5 s
//! (its own search: 0.9957 / 0.9978 / 0.9992); 100k × 512 (10 000 clusters): vitrine
//! 22.0–22.9 s (two builds: 0.9944 / 0.9961 / 0.9986 and 0.9915 / 0.9951 / 0.9966),
//! hnsw_rs 97.9 s (0.9965 / 0.9971 / 0.9986; another build 0.9914 / 0.9931 / 0.9976),
//! hnswlib 22.0 s (0.9925 / 0.9975 / 0.9990). One build of either varies by up to
//! 0.005 at ef 40 here; the means differ by at most 0.001.
//!
//! The result is a [`Graph`]; [`super::hnsw::write_dump`] files it in hnsw_rs's dump
//! format, which hnsw_rs loads (`index --add` inserts into it with hnsw_rs).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use rayon::prelude::*;

use vitrine_kernels::dot::dot_rows;

use super::hnsw::{Graph, GraphError, GraphParams, Scored, Visited, dot};
use super::hnsw_dump::MAX_LAYERS;
use crate::rng::Rng;

/// Seed of the level draws (a node's level depends only on its id).
const LEVEL_SEED: u64 = 0x686e_7377;

/// Nodes inserted one by one before the parallel phase, so that it starts from a
/// connected core.
const SERIAL_SEED: usize = 64;

/// The level of node `id`: `⌊−ln U / ln m⌋` (hnsw_rs's and hnswlib's law), below
/// [`MAX_LAYERS`].
fn draw_level(id: usize, m: usize) -> u8 {
    let u = f64::from(Rng::derive(LEVEL_SEED, &[id as u64]).f32()).max(1e-12);
    let level = (-u.ln() / (m as f64).ln()).floor();
    level.clamp(0.0, (MAX_LAYERS - 1) as f64) as u8
}

/// The graph while it is being built: shared by the inserting threads.
struct Shared<'a> {
    data: &'a [f32],
    dim: usize,
    m: usize,
    ef: usize,
    levels: Vec<u8>,
    /// Layer 0: `1 + 2m` slots per node, the count first.
    level0: Vec<AtomicU32>,
    /// Layers `1..=level` of node `i`: `level` blocks of `1 + m` slots from
    /// `upper_at[i]`.
    upper: Vec<AtomicU32>,
    upper_at: Vec<usize>,
    /// The similarity of each link to its node (`f32` bits), beside its slot in
    /// `level0` / `upper`: the reverse update finds a full list's least similar
    /// link without computing a distance. Changed and read under the node's lock.
    sims0: Vec<AtomicU32>,
    sims_up: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
    /// `(node, level)` of the entry point; `None` while the graph is empty.
    entry: Mutex<Option<(u32, usize)>>,
}

/// Buffers one inserting thread reuses.
#[derive(Default)]
struct Scratch {
    visited: Visited,
    links: Vec<u32>,
    fresh: Vec<u32>,
    scores: Vec<f32>,
}

impl<'a> Shared<'a> {
    /// An empty graph of `levels.len()` nodes.
    fn new(data: &'a [f32], dim: usize, levels: Vec<u8>, params: GraphParams) -> Self {
        let m = params.m;
        let n = levels.len();
        let mut upper_at = vec![0usize; n];
        let mut total = 0usize;
        for (at, &l) in upper_at.iter_mut().zip(&levels) {
            *at = total;
            total += usize::from(l) * (1 + m);
        }
        let atomics = |len: usize| (0..len).map(|_| AtomicU32::new(0)).collect::<Vec<_>>();
        Self {
            data,
            dim,
            m,
            ef: params.ef_construction.max(m),
            levels,
            level0: atomics(n * (1 + 2 * m)),
            upper: atomics(total),
            sims0: atomics(n * (1 + 2 * m)),
            sims_up: atomics(total),
            upper_at,
            locks: (0..n).map(|_| Mutex::new(())).collect(),
            entry: Mutex::new(None),
        }
    }

    #[inline]
    fn row(&self, id: u32) -> &'a [f32] {
        let s = id as usize * self.dim;
        &self.data[s..s + self.dim]
    }

    /// Most links a node keeps on `layer`.
    fn cap(&self, layer: usize) -> usize {
        if layer == 0 { 2 * self.m } else { self.m }
    }

    /// The slots (count, then links) of `id` on `layer`.
    #[inline]
    fn slots(&self, id: u32, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            let w = 1 + 2 * self.m;
            let s = id as usize * w;
            &self.level0[s..s + w]
        } else {
            let w = 1 + self.m;
            let s = self.upper_at[id as usize] + (layer - 1) * w;
            &self.upper[s..s + w]
        }
    }

    /// The similarities beside [`Self::slots`] (the first one unused).
    fn sims(&self, id: u32, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            let w = 1 + 2 * self.m;
            let s = id as usize * w;
            &self.sims0[s..s + w]
        } else {
            let w = 1 + self.m;
            let s = self.upper_at[id as usize] + (layer - 1) * w;
            &self.sims_up[s..s + w]
        }
    }

    /// Copies the links of `id` on `layer` into `out` (no lock: see the module notes).
    #[inline]
    fn read(&self, id: u32, layer: usize, out: &mut Vec<u32>) {
        out.clear();
        let slots = self.slots(id, layer);
        let count = (slots[0].load(Relaxed) as usize).min(slots.len() - 1);
        out.extend(slots[1..=count].iter().map(|s| s.load(Relaxed)));
    }

    /// Replaces the links of `id` on `layer` (the caller holds `id`'s lock).
    fn write(&self, id: u32, layer: usize, links: &[(f32, u32)]) {
        let slots = self.slots(id, layer);
        let sims = self.sims(id, layer);
        let count = links.len().min(slots.len() - 1);
        for ((slot, sim), &(s, link)) in slots[1..].iter().zip(&sims[1..]).zip(links) {
            slot.store(link, Relaxed);
            sim.store(s.to_bits(), Relaxed);
        }
        slots[0].store(count as u32, Relaxed);
    }

    /// `scores[i]` = similarity of `q` to node `ids[i]` (four rows at a time,
    /// prefetched ahead).
    fn scores(&self, q: &[f32], ids: &[u32], scores: &mut Vec<f32>) {
        scores.resize(ids.len(), 0.0);
        dot_rows(q, self.data, self.dim, ids, scores);
    }

    /// Greedy descent on `layer` from `cur` towards `q`.
    fn greedy(&self, q: &[f32], cur: &mut (f32, u32), layer: usize, scratch: &mut Scratch) {
        loop {
            let mut changed = false;
            self.read(cur.1, layer, &mut scratch.links);
            self.scores(q, &scratch.links, &mut scratch.scores);
            for (&nb, &s) in scratch.links.iter().zip(&scratch.scores) {
                if s > cur.0 {
                    *cur = (s, nb);
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// The `ef` nodes of `layer` most similar to `q` found by a beam search from
    /// `entry`, best first.
    fn search_layer(
        &self,
        q: &[f32],
        entry: &[(f32, u32)],
        layer: usize,
        scratch: &mut Scratch,
    ) -> Vec<(f32, u32)> {
        let ef = self.ef;
        scratch.visited.start(self.levels.len());
        let mut candidates = BinaryHeap::with_capacity(2 * ef);
        let mut top: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef + 1);
        for &(s, id) in entry {
            if scratch.visited.insert(id) {
                candidates.push(Scored(s, id));
                top.push(Reverse(Scored(s, id)));
                if top.len() > ef {
                    top.pop();
                }
            }
        }
        let mut worst = top.peek().map_or(f32::NEG_INFINITY, |r| r.0.0);
        while let Some(Scored(s, c)) = candidates.pop() {
            if s < worst && top.len() >= ef {
                break;
            }
            self.read(c, layer, &mut scratch.links);
            scratch.fresh.clear();
            for &nb in &scratch.links {
                if scratch.visited.insert(nb) {
                    scratch.fresh.push(nb);
                }
            }
            self.scores(q, &scratch.fresh, &mut scratch.scores);
            for (&nb, &sn) in scratch.fresh.iter().zip(&scratch.scores) {
                if top.len() < ef || sn > worst {
                    candidates.push(Scored(sn, nb));
                    top.push(Reverse(Scored(sn, nb)));
                    if top.len() > ef {
                        top.pop();
                    }
                    worst = top.peek().map_or(f32::NEG_INFINITY, |r| r.0.0);
                }
            }
        }
        let mut out: Vec<(f32, u32)> = top
            .into_iter()
            .map(|Reverse(Scored(s, id))| (s, id))
            .collect();
        out.sort_unstable_by_key(|&(s, id)| Reverse(Scored(s, id)));
        out
    }

    /// The diversity heuristic: from `cands` (best first), keeps a candidate when it
    /// is more similar to the reference than to every candidate kept before it; at
    /// most `keep`.
    fn select(
        &self,
        cands: &[(f32, u32)],
        keep: usize,
        out: &mut Vec<(f32, u32)>,
        scratch: &mut Scratch,
    ) {
        out.clear();
        let mut d = [0f32];
        for &(s, c) in cands {
            if out.len() >= keep {
                break;
            }
            let rc = self.row(c);
            // hnswlib's early exit: the first kept node closer to `c` rejects it.
            let diverse = out.iter().all(|&(_, r)| {
                dot_rows(rc, self.data, self.dim, &[r], &mut d);
                d[0] <= s
            });
            if diverse {
                out.push((s, c));
            }
        }
        let _ = scratch;
    }

    /// Links `from` → `to` on `layer` (`s` = their similarity); when `from`'s list
    /// is full, `to` replaces its least similar link if it is more similar (hnsw_rs's
    /// reverse update: the nearest `2·m` / `m` stay).
    fn link_back(&self, from: u32, to: u32, s: f32, layer: usize, scratch: &mut Scratch) {
        let Ok(_guard) = self.locks[from as usize].lock() else {
            return;
        };
        self.read(from, layer, &mut scratch.links);
        if scratch.links.contains(&to) {
            return;
        }
        let slots = self.slots(from, layer);
        let sims = self.sims(from, layer);
        let count = scratch.links.len();
        if count < self.cap(layer) {
            slots[1 + count].store(to, Relaxed);
            sims[1 + count].store(s.to_bits(), Relaxed);
            slots[0].store(count as u32 + 1, Relaxed);
            return;
        }
        let worst = scratch
            .links
            .iter()
            .zip(&sims[1..])
            .map(|(&l, sim)| Scored(f32::from_bits(sim.load(Relaxed)), l))
            .enumerate()
            .min_by_key(|&(_, sc)| sc);
        if let Some((at, Scored(w, _))) = worst
            && s > w
        {
            slots[1 + at].store(to, Relaxed);
            sims[1 + at].store(s.to_bits(), Relaxed);
        }
    }

    /// Greedy descent from the entry point `(node, level)` down to layer `floor`:
    /// where a search on layer `floor - 1` starts.
    fn descend(
        &self,
        q: &[f32],
        (ep, top): (u32, usize),
        floor: usize,
        scratch: &mut Scratch,
    ) -> (f32, u32) {
        let mut cur = (dot(q, self.row(ep)), ep);
        for layer in (floor..=top).rev() {
            self.greedy(q, &mut cur, layer, scratch);
        }
        cur
    }

    fn insert(&self, id: u32, scratch: &mut Scratch) {
        let level = usize::from(self.levels[id as usize]);
        let start = {
            let Ok(mut entry) = self.entry.lock() else {
                return;
            };
            let Some(e) = *entry else {
                *entry = Some((id, level));
                return;
            };
            e
        };
        let q = self.row(id);
        let (_, top) = start;
        let mut entry = vec![self.descend(q, start, level + 1, scratch)];
        let mut chosen = Vec::with_capacity(self.m);
        for layer in (0..=level.min(top)).rev() {
            let found = self.search_layer(q, &entry, layer, scratch);
            self.select(&found, self.cap(layer), &mut chosen, scratch);
            if let Ok(_guard) = self.locks[id as usize].lock() {
                self.write(id, layer, &chosen);
            }
            for &(s, nb) in &chosen {
                self.link_back(nb, id, s, layer, scratch);
            }
            entry = found;
        }
        if level > top
            && let Ok(mut e) = self.entry.lock()
            && e.is_none_or(|(_, l)| level > l)
        {
            *e = Some((id, level));
        }
    }

    /// Inserts every node (the first `seed` one by one, the rest on the rayon pool).
    fn insert_all(&self, seed: usize) {
        let n = self.levels.len();
        let serial_end = seed.min(n);
        let mut scratch = Scratch::default();
        for id in 0..serial_end {
            self.insert(id as u32, &mut scratch);
        }
        (serial_end..n)
            .into_par_iter()
            .for_each_init(Scratch::default, |scratch, id| {
                self.insert(id as u32, scratch);
            });
    }

    /// Which nodes a walk along layer-0 links from the entry point reaches.
    fn reached(&self, entry: u32, scratch: &mut Scratch) -> Vec<bool> {
        let mut seen = vec![false; self.levels.len()];
        let mut stack = vec![entry];
        seen[entry as usize] = true;
        while let Some(x) = stack.pop() {
            self.read(x, 0, &mut scratch.links);
            for &nb in &scratch.links {
                if !seen[nb as usize] {
                    seen[nb as usize] = true;
                    stack.push(nb);
                }
            }
        }
        seen
    }

    /// Links back every node that no search can reach; returns how many took a link.
    ///
    /// A node is found only through a link into it, and the reverse update drops the
    /// least similar link of a full list: a node whose neighbours all filled up with
    /// nearer ones, or a group whose only links in were dropped, is left out. Parallel
    /// inserts make it likelier (a search that ran while its neighbours were being
    /// inserted is stale by the time it links back): on 1,200 clustered rows, m 8, 3
    /// nodes of a parallel build on average, at most 9 in 300 builds, 33 with the
    /// cores busy elsewhere (a serial build: none). Each gets a link from the nearest
    /// node that a search does reach, replacing that node's least similar link when
    /// its list is full (a link whose target has another one in, where there is one);
    /// the walk from the entry is then redone until it reaches every node.
    fn reconnect(&self) -> usize {
        let Some(start) = self.entry.lock().ok().and_then(|e| *e) else {
            return 0;
        };
        let n = self.levels.len();
        let mut scratch = Scratch::default();
        let mut linked = 0;
        // A few rounds: a replaced link can leave its target out in turn.
        for _ in 0..4 {
            // Hosts come from what the walk reached before this round, so that a group
            // cut off gets a link from outside for each member, not one for the group.
            let seen = self.reached(start.0, &mut scratch);
            if seen.iter().all(|&r| r) {
                break;
            }
            let mut inbound = vec![0u32; n];
            for id in 0..n as u32 {
                self.read(id, 0, &mut scratch.links);
                for &nb in &scratch.links {
                    inbound[nb as usize] += 1;
                }
            }
            for id in 0..n as u32 {
                if seen[id as usize] {
                    continue;
                }
                let q = self.row(id);
                let from = self.descend(q, start, 1, &mut scratch);
                let found = self.search_layer(q, &[from], 0, &mut scratch);
                // No reached node in the beam: the entry point is one.
                let (s, host) = found
                    .into_iter()
                    .find(|&(_, c)| seen[c as usize])
                    .unwrap_or_else(|| (dot(q, self.row(start.0)), start.0));
                if let Some(dropped) = self.force_link(host, id, s, &inbound) {
                    inbound[dropped as usize] -= 1;
                }
                inbound[id as usize] += 1;
                linked += 1;
            }
        }
        linked
    }

    /// Adds the layer-0 link `host` → `to` (`s` = their similarity). A full list
    /// gives up its least similar link whose target has another link in (`inbound`
    /// counts them), or its least similar link when none has; returns the dropped
    /// target. Single-threaded (after the inserts).
    fn force_link(&self, host: u32, to: u32, s: f32, inbound: &[u32]) -> Option<u32> {
        let slots = self.slots(host, 0);
        let sims = self.sims(host, 0);
        let count = slots[0].load(Relaxed) as usize;
        let at = if count < self.cap(0) {
            slots[0].store(count as u32 + 1, Relaxed);
            count + 1
        } else {
            let weakest = |spare_only: bool| {
                (1..=count)
                    .filter(|&at| !spare_only || inbound[slots[at].load(Relaxed) as usize] > 1)
                    .min_by_key(|&at| Scored(f32::from_bits(sims[at].load(Relaxed)), at as u32))
            };
            weakest(true).or_else(|| weakest(false))?
        };
        let dropped = (at <= count).then(|| slots[at].load(Relaxed));
        slots[at].store(to, Relaxed);
        sims[at].store(s.to_bits(), Relaxed);
        dropped
    }

    fn into_graph(self) -> Result<Graph, String> {
        let n = self.levels.len();
        let Some((entry, top_level)) = self.entry.into_inner().ok().flatten() else {
            return Ok(Graph::default());
        };
        let read = |slots: &[AtomicU32]| -> Vec<u32> {
            let count = (slots[0].load(Relaxed) as usize).min(slots.len() - 1);
            slots[1..=count].iter().map(|s| s.load(Relaxed)).collect()
        };
        let w0 = 1 + 2 * self.m;
        let wu = 1 + self.m;
        let lists = (0..n)
            .map(|i| {
                let mut layers = vec![read(&self.level0[i * w0..(i + 1) * w0])];
                for l in 0..usize::from(self.levels[i]) {
                    let s = self.upper_at[i] + l * wu;
                    layers.push(read(&self.upper[s..s + wu]));
                }
                (i, layers)
            })
            .collect();
        Graph::from_links(n, self.m, lists, entry, top_level)
    }
}

/// Builds the HNSW graph of the `data.len() / dim` rows of `data` (unit vectors;
/// similarity = dot product), inserting in parallel on the rayon pool when
/// `parallel` (then not deterministic; serial builds repeat exactly). Node `i` is
/// row `i`.
pub fn build(
    data: &[f32],
    dim: usize,
    params: GraphParams,
    parallel: bool,
) -> Result<Graph, GraphError> {
    params.validate()?;
    let dim = dim.max(1);
    let n = data.len() / dim;
    if u32::try_from(n).is_err() {
        return Err(GraphError::Params(format!(
            "{n} vectors are more than a graph holds ({})",
            u32::MAX
        )));
    }
    let levels = (0..n).map(|i| draw_level(i, params.m)).collect();
    let shared = Shared::new(&data[..n * dim], dim, levels, params);
    shared.insert_all(if parallel { SERIAL_SEED } else { n });
    let linked = shared.reconnect();
    if linked > 0 {
        tracing::info!("HNSW build: linked back {linked} node(s) that no search reached");
    }
    shared.into_graph().map_err(GraphError::Params)
}

/// `graph` over `data` (`dim` wide; node `i` is row `i`) with every node that no walk
/// from its entry point reaches linked back ([`Shared::reconnect`]), for a graph built
/// elsewhere: hnsw_rs's inserts of `index --add`. Returns the graph and how many
/// nodes took a link. Only layer 0 changes (a list longer than `graph.m()` allows
/// keeps its nearest links); the upper layers are filed as they came.
pub fn reconnect(
    graph: &Graph,
    data: &[f32],
    dim: usize,
    ef_construction: usize,
) -> Result<(Graph, usize), GraphError> {
    let n = graph.len();
    let dim = dim.max(1);
    if n == 0 {
        return Ok((graph.clone(), 0));
    }
    if data.len() < n * dim {
        return Err(GraphError::Params(format!(
            "{n} nodes over {} rows of data",
            data.len() / dim
        )));
    }
    let params = GraphParams {
        m: graph.m(),
        ef_construction,
    };
    params.validate()?;
    let levels = (0..n as u32)
        .map(|id| graph.level(id).min(MAX_LAYERS - 1) as u8)
        .collect();
    let shared = Shared::new(&data[..n * dim], dim, levels, params);
    let mut pairs = Vec::new();
    for id in 0..n as u32 {
        for layer in 0..=usize::from(shared.levels[id as usize]) {
            let links = graph.links(id, layer);
            pairs.clear();
            // hnsw_rs links some upper-layer nodes to nodes below that layer (~40 of
            // 22,000 upper links on 20,000 rows); the flat lists hold a layer only for
            // the nodes on it, so the search while mending goes without them.
            pairs.extend(
                links
                    .iter()
                    .filter(|&&nb| nb != id && usize::from(shared.levels[nb as usize]) >= layer)
                    .map(|&nb| (dot(shared.row(id), shared.row(nb)), nb)),
            );
            if pairs.len() > shared.cap(layer) {
                pairs.sort_unstable_by_key(|&(s, nb)| Reverse(Scored(s, nb)));
            }
            shared.write(id, layer, &pairs);
        }
    }
    if let Ok(mut e) = shared.entry.lock() {
        *e = Some(graph.entry());
    }
    let linked = shared.reconnect();
    // Only layer 0 changes: the upper layers are filed as they came.
    let mut layer0 = Vec::new();
    let lists = (0..n as u32)
        .map(|id| {
            shared.read(id, 0, &mut layer0);
            let mut layers = vec![layer0.clone()];
            layers.extend((1..=graph.level(id)).map(|l| graph.links(id, l).to_vec()));
            (id as usize, layers)
        })
        .collect();
    let (entry, top) = graph.entry();
    let mended = Graph::from_links(n, graph.m(), lists, entry, top).map_err(GraphError::Params)?;
    Ok((mended, linked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::clustered::{ClusterSpec, vectors};
    use crate::index::hnsw::self_recall;

    const PARAMS: GraphParams = GraphParams {
        m: 8,
        ef_construction: 64,
    };

    fn data(n: usize) -> (Vec<f32>, usize) {
        let spec = ClusterSpec {
            dim: 24,
            clusters: 60,
            group_size: 10,
            ..ClusterSpec::default()
        };
        (vectors(&spec, n, 0).data, spec.dim)
    }

    fn lists(g: &Graph) -> Vec<Vec<Vec<u32>>> {
        (0..g.len() as u32)
            .map(|id| (0..=g.level(id)).map(|l| g.links(id, l).to_vec()).collect())
            .collect()
    }

    #[test]
    fn serial_builds_repeat_and_every_list_is_valid() {
        let (d, dim) = data(700);
        let g = build(&d, dim, PARAMS, false).expect("build");
        assert_eq!(
            lists(&g),
            lists(&build(&d, dim, PARAMS, false).expect("again"))
        );
        let top = (0..700u32).map(|id| g.level(id)).max().expect("nodes");
        assert_eq!(g.entry().1, top);
        assert_eq!(g.level(g.entry().0), top);
        assert_eq!(g.m(), PARAMS.m);
        assert_lists_valid(&g, true);
        assert!(self_recall(&g, &d, dim, 700, 32) >= 0.99);
    }

    /// Nodes a walk along layer-0 links from the entry point does not reach.
    fn unreached(g: &Graph) -> usize {
        let mut seen = vec![false; g.len()];
        let mut stack = vec![g.entry().0];
        seen[g.entry().0 as usize] = true;
        while let Some(x) = stack.pop() {
            for &nb in g.links(x, 0) {
                if !std::mem::replace(&mut seen[nb as usize], true) {
                    stack.push(nb);
                }
            }
        }
        seen.iter().filter(|&&r| !r).count()
    }

    #[test]
    fn parallel_builds_find_every_row() {
        let (d, dim) = data(1200);
        // Several builds: which nodes a parallel build leaves out depends on timing.
        for _ in 0..5 {
            let g = build(&d, dim, PARAMS, true).expect("build");
            assert_eq!(g.len(), 1200);
            assert_eq!(unreached(&g), 0);
            assert!(self_recall(&g, &d, dim, 1200, 32) >= 0.995);
        }
        assert!(build(&d, dim, GraphParams { m: 1, ..PARAMS }, true).is_err());
        assert!(build(&[], dim, PARAMS, true).expect("empty").is_empty());
    }

    #[test]
    fn a_group_cut_off_from_the_graph_is_linked_back() {
        let (d, dim) = data(700);
        let shared = Shared::new(
            &d,
            dim,
            (0..700).map(|i| draw_level(i, PARAMS.m)).collect(),
            PARAMS,
        );
        shared.insert_all(700);
        let entry = shared.entry.lock().expect("entry").expect("built").0;
        // The island: the 12 rows most similar to one that is not the entry point,
        // with every link into it from outside removed, on every layer.
        let centre = (entry + 1) % 700;
        let mut by_sim: Vec<(f32, u32)> = (0..700u32)
            .map(|j| (dot(shared.row(centre), shared.row(j)), j))
            .collect();
        by_sim.sort_by(|a, b| b.0.total_cmp(&a.0));
        let island: Vec<u32> = by_sim
            .iter()
            .map(|&(_, j)| j)
            .filter(|&j| j != entry)
            .take(12)
            .collect();
        let mut links = Vec::new();
        for id in (0..700u32).filter(|id| !island.contains(id)) {
            for layer in 0..=usize::from(shared.levels[id as usize]) {
                shared.read(id, layer, &mut links);
                let sims = shared.sims(id, layer);
                let kept: Vec<(f32, u32)> = links
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| !island.contains(l))
                    .map(|(at, &l)| (f32::from_bits(sims[1 + at].load(Relaxed)), l))
                    .collect();
                shared.write(id, layer, &kept);
            }
        }
        let cut = shared.into_graph().expect("graph");
        assert_eq!(unreached(&cut), 12, "the cut did not cut");

        // Through the public entry: a graph in, the graph mended out.
        let (g, linked) = reconnect(&cut, &d, dim, PARAMS.ef_construction).expect("reconnect");
        assert_eq!(linked, 12);
        assert_eq!(unreached(&g), 0);
        assert_lists_valid(&g, true);
        assert_eq!(self_recall(&g, &d, dim, 700, 32), 1.0);
        // Nothing to mend: the same lists.
        let (again, none) = reconnect(&g, &d, dim, PARAMS.ef_construction).expect("again");
        assert_eq!((none, lists(&again)), (0, lists(&g)));
    }

    /// Every list within its cap (and on its layer when `on_layer`: hnsw_rs's are
    /// not), without self-links or repeats; no node without links.
    fn assert_lists_valid(g: &Graph, on_layer: bool) {
        for id in 0..g.len() as u32 {
            for layer in 0..=g.level(id) {
                let l = g.links(id, layer);
                let cap = if layer == 0 { 2 * g.m() } else { g.m() };
                assert!(l.len() <= cap, "{id}/{layer}: {} links", l.len());
                assert!(!l.contains(&id), "{id} links to itself");
                let mut u = l.to_vec();
                u.sort_unstable();
                u.dedup();
                assert_eq!(u.len(), l.len(), "{id}/{layer}: a link twice");
                assert!(
                    !on_layer || l.iter().all(|&nb| g.level(nb) >= layer),
                    "{id}/{layer}"
                );
            }
            assert!(!g.links(id, 0).is_empty(), "{id} has no links");
        }
    }

    #[test]
    fn hnsw_rs_graphs_are_mended_too() {
        use crate::index::hnsw::{insert_rows, new_index, read_graph, with_loaded, write_dump};
        // 20,000 rows in 60 clusters: dense enough that hnsw_rs leaves some out
        // (about 50 a build).
        let n = 20_000;
        let (d, dim) = data(n);
        let index = new_index(PARAMS, n).expect("index");
        insert_rows(&index, &d, dim, 0, true);
        let built = Graph::from_hnsw(&index).expect("graph");
        let before = unreached(&built);
        assert!(before > 0, "hnsw_rs reached every row: nothing to mend");
        let (g, linked) = reconnect(&built, &d, dim, PARAMS.ef_construction).expect("mend");
        assert_eq!(
            unreached(&g),
            0,
            "{before} unreached before, {linked} linked"
        );
        assert!(linked >= before, "{before} unreached, {linked} linked");
        assert_lists_valid(&g, false);
        // Only layer 0 changed.
        for id in 0..n as u32 {
            assert_eq!(g.level(id), built.level(id));
            for layer in 1..=g.level(id) {
                assert_eq!(g.links(id, layer), built.links(id, layer), "{id}/{layer}");
            }
        }
        assert_eq!(g.entry(), built.entry());
        assert!(self_recall(&g, &d, dim, n, 32) >= self_recall(&built, &d, dim, n, 32));
        // Filed as `index --add` files it, links across layers included: our reader
        // and hnsw_rs's loader both take it back.
        let dir = tempfile::tempdir().expect("tmp");
        write_dump(dir.path(), "g", &g, &d, dim, PARAMS.ef_construction).expect("dump");
        let expected = crate::index::hnsw_dump::Expected { count: n, dim };
        let back = read_graph(dir.path(), "g", expected).expect("read back");
        // The dump files each list nearest first (hnsw_rs's order).
        let sorted = |g: &Graph| {
            let mut l = lists(g);
            l.iter_mut().flatten().for_each(|x| x.sort_unstable());
            l
        };
        assert_eq!(sorted(&back), sorted(&g));
        let loaded = with_loaded(dir.path(), "g", expected, |index| {
            (index.get_nb_point(), index.get_ef_construction())
        });
        assert_eq!(
            loaded.expect("hnsw_rs loads it"),
            (n, PARAMS.ef_construction)
        );
    }
}
