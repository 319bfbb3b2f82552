//! A bounds-checked reader of hnsw_rs's dump (`<basename>.hnsw.graph` and
//! `.hnsw.data`, hnsw_rs 0.3 format 3/4, full mode, native byte order).
//!
//! hnsw_rs's own loader trusts the files: lengths taken from them size allocations
//! and raw slices, malformed points hit `assert!`s, and one path calls `exit(1)`. A
//! hash in the index header catches accidents, not a crafted file. So every index
//! load reads the graph here, checking every length against the bytes left, every id
//! against the point count, and every cross-reference; the searchable graph
//! (`hnsw::Graph`) is built from the result. hnsw_rs's loader runs only for `index --add`, and only on a
//! dump this reader has accepted.
//!
//! Layout (from hnsw_rs's `hnswio.rs`):
//!
//! ```text
//! graph: magic u32 · dumpmode u8 · max_nb_connection u8 · [level_scale f64, v4]
//!        · nb_layer u8 · ef usize · nb_point usize · dimension usize
//!        · distance name (usize + bytes) · type name (usize + bytes)
//!        · layers u8 · per layer: MAGICLAYER u32 · points usize · per point:
//!          MAGICPOINT u32 · origin usize · layer u8 · rank i32
//!          · per layer of nb_layer: count usize · count × (id usize, layer u8, rank i32, dist f32)
//!        · entry point: origin usize · layer u8 · rank i32
//! data:  MAGICDATAP u32 · dimension usize · per point (graph order):
//!        MAGICDATAP u32 · origin u64 · bytes u64 · dimension × f32
//! ```

use std::path::Path;

/// hnsw_rs's layer count (its dump refuses any other).
pub const MAX_LAYERS: usize = 16;

/// Names of the two dump files of `basename`.
pub fn dump_files(basename: &str) -> [String; 2] {
    [
        format!("{basename}.hnsw.graph"),
        format!("{basename}.hnsw.data"),
    ]
}

const MAGIC_DESCR_3: u32 = 0x002a_6771;
const MAGIC_DESCR_4: u32 = 0x002a_6779;
const MAGIC_LAYER: u32 = 0x000a_676f;
const MAGIC_POINT: u32 = 0x000a_678f;
const MAGIC_DATA: u32 = 0xa67f_0000;
/// hnsw_rs refuses longer type and distance names.
const MAX_NAME: usize = 256;
/// Bytes of one neighbour record: id, layer, rank, distance.
const NEIGHBOUR_BYTES: usize = 8 + 1 + 4 + 4;

/// What the index header promises about the dump.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub count: usize,
    pub dim: usize,
}

/// A cursor that never reads past its slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "truncated at byte {} reading {what} ({n} bytes wanted, {} left)",
                self.pos,
                self.left()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_ne_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_ne_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_ne_bytes(self.array(what)?))
    }

    /// hnsw_rs writes `usize` as 8 bytes on the 64-bit targets vitrine builds for.
    fn usize(&mut self, what: &str) -> Result<usize, String> {
        let v = self.u64(what)?;
        usize::try_from(v).map_err(|_| format!("{what} = {v} does not fit this machine"))
    }

    fn f32(&mut self, what: &str) -> Result<f32, String> {
        Ok(f32::from_ne_bytes(self.array(what)?))
    }

    fn f64(&mut self, what: &str) -> Result<f64, String> {
        Ok(f64::from_ne_bytes(self.array(what)?))
    }

    fn name(&mut self, what: &str) -> Result<String, String> {
        let len = self.usize(what)?;
        if len > MAX_NAME {
            return Err(format!("{what} is {len} bytes long (at most {MAX_NAME})"));
        }
        String::from_utf8(self.take(len, what)?.to_vec())
            .map_err(|_| format!("{what} is not UTF-8"))
    }

    fn magic(&mut self, want: u32, what: &str) -> Result<(), String> {
        let at = self.pos;
        let got = self.u32(what)?;
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "bad magic {got:#010x} for {what} at byte {at} (expected {want:#010x})"
            ))
        }
    }

    fn end(&self, what: &str) -> Result<(), String> {
        if self.left() == 0 {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes after the {what}", self.left()))
        }
    }
}

/// One point of the dump: its data id and, per layer, its links as `(data id, layer,
/// rank)` of the neighbour's record (hnsw_rs resolves all of them, so all are checked).
struct Point {
    origin: usize,
    links: Vec<Vec<(usize, u8, i32)>>,
}

/// Which of the two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFile {
    Graph,
    Data,
}

/// The adjacency a checked dump holds, by data id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// The point count.
    pub nodes: usize,
    /// hnsw_rs's `max_nb_connection`.
    pub m: usize,
    /// Per point: its data id and its neighbours' data ids on layers `0..=its layer`.
    pub lists: Vec<(usize, Vec<Vec<u32>>)>,
    /// The entry point's data id and layer.
    pub entry: u32,
    pub top_level: usize,
}

/// Parses and checks a dump held in memory; the graph's adjacency on success.
pub fn parse(graph: &[u8], data: &[u8], expected: Expected) -> Result<Links, (DumpFile, String)> {
    let (by_layer, links) = parse_graph(graph, expected).map_err(|m| (DumpFile::Graph, m))?;
    check_data(data, &by_layer, expected.dim).map_err(|m| (DumpFile::Data, m))?;
    Ok(links)
}

type Parsed = (Vec<Vec<Point>>, Links);

fn parse_graph(graph: &[u8], expected: Expected) -> Result<Parsed, String> {
    let mut g = Reader::new(graph);
    let version = match g.u32("the file magic")? {
        MAGIC_DESCR_3 => 3,
        MAGIC_DESCR_4 => 4,
        m => {
            return Err(format!(
                "not an hnsw_rs dump of format 3 or 4 (magic {m:#010x})"
            ));
        }
    };
    if g.u8("the dump mode")? != 1 {
        return Err("not a full-mode dump (vitrine writes full dumps)".into());
    }
    let m = usize::from(g.u8("max_nb_connection")?);
    if m < 2 {
        return Err(format!("max_nb_connection = {m} (at least 2)"));
    }
    if version == 4 {
        let scale = g.f64("the level scale")?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("level scale {scale} is not a positive number"));
        }
    }
    let nb_layer = usize::from(g.u8("the layer count")?);
    if nb_layer != MAX_LAYERS {
        return Err(format!("{nb_layer} layers (hnsw_rs dumps {MAX_LAYERS})"));
    }
    g.usize("ef")?;
    let nb_point = g.usize("the point count")?;
    let dim = g.usize("the dimension")?;
    if nb_point != expected.count || dim != expected.dim {
        return Err(format!(
            "the dump holds {nb_point} points of dimension {dim}, the index {} of dimension {}",
            expected.count, expected.dim
        ));
    }
    let distance = g.name("the distance name")?;
    if distance.rsplit("::").next() != Some("UnitCosine") {
        return Err(format!("distance `{distance}` is not vitrine's UnitCosine"));
    }
    let t_name = g.name("the value type name")?;
    if t_name != "f32" {
        return Err(format!("values of type `{t_name}` (vitrine stores f32)"));
    }
    let layers = usize::from(g.u8("the number of filled layers")?);
    if layers > MAX_LAYERS {
        return Err(format!("{layers} filled layers (at most {MAX_LAYERS})"));
    }
    let mut by_layer: Vec<Vec<Point>> = Vec::with_capacity(layers);
    let mut seen = vec![false; nb_point];
    let mut loaded = 0usize;
    let max_links = 2 * m;
    for l in 0..layers {
        g.magic(MAGIC_LAYER, &format!("layer {l}"))?;
        let points = g.usize("a layer's point count")?;
        if points > nb_point - loaded {
            return Err(format!(
                "layer {l} claims {points} points, more than the {} left of {nb_point}",
                nb_point - loaded
            ));
        }
        let mut layer = Vec::with_capacity(points);
        for r in 0..points {
            g.magic(MAGIC_POINT, &format!("point {r} of layer {l}"))?;
            let origin = g.usize("a point id")?;
            if origin >= nb_point {
                return Err(format!("point id {origin} is outside 0..{nb_point}"));
            }
            if std::mem::replace(&mut seen[origin], true) {
                return Err(format!("point id {origin} appears twice"));
            }
            let (pl, pr) = (g.u8("a point layer")?, g.i32("a point rank")?);
            if usize::from(pl) != l || usize::try_from(pr).ok() != Some(r) {
                return Err(format!(
                    "point {origin} is filed as ({pl}, {pr}) at position ({l}, {r})"
                ));
            }
            let mut links = Vec::with_capacity(nb_layer);
            for k in 0..nb_layer {
                let count = g.usize("a neighbour count")?;
                if count > max_links || count * NEIGHBOUR_BYTES > g.left() {
                    return Err(format!(
                        "point {origin} claims {count} neighbours on layer {k} (at most {max_links})"
                    ));
                }
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    let id = g.usize("a neighbour id")?;
                    let nl = g.u8("a neighbour layer")?;
                    let nr = g.i32("a neighbour rank")?;
                    let d = g.f32("a neighbour distance")?;
                    if !d.is_finite() {
                        return Err(format!("point {origin} has a link of distance {d}"));
                    }
                    ids.push((id, nl, nr));
                }
                links.push(ids);
            }
            layer.push(Point { origin, links });
        }
        loaded += points;
        by_layer.push(layer);
    }
    if loaded != nb_point {
        return Err(format!("{loaded} points for the {nb_point} declared"));
    }
    let resolve = |id: usize, nl: u8, nr: i32| -> Result<(), String> {
        let target = by_layer
            .get(usize::from(nl))
            .and_then(|layer| usize::try_from(nr).ok().and_then(|r| layer.get(r)));
        match target {
            Some(p) if p.origin == id => Ok(()),
            Some(p) => Err(format!(
                "a link to point {id} points at the record of point {}",
                p.origin
            )),
            None => Err(format!("a link to point {id} names no record ({nl}, {nr})")),
        }
    };
    for p in by_layer.iter().flatten() {
        for &(id, nl, nr) in p.links.iter().flatten() {
            resolve(id, nl, nr)?;
        }
    }
    let entry = g.usize("the entry point")?;
    let (el, er) = (g.u8("the entry layer")?, g.i32("the entry rank")?);
    resolve(entry, el, er).map_err(|e| format!("entry point: {e}"))?;
    g.end("entry point")?;
    // A point filed on layer `l` links on layers `0..=l`.
    let lists: Vec<(usize, Vec<Vec<u32>>)> = by_layer
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| layer.iter().map(move |p| (l, p)))
        .map(|(l, p)| {
            let links = p
                .links
                .iter()
                .take(l + 1)
                .map(|ids| ids.iter().map(|&(id, _, _)| id as u32).collect())
                .collect();
            (p.origin, links)
        })
        .collect();
    let links = Links {
        nodes: nb_point,
        m,
        lists,
        entry: entry as u32,
        top_level: usize::from(el),
    };
    Ok((by_layer, links))
}

/// The data file: the same points in the same order, each `dim` finite floats.
fn check_data(data: &[u8], by_layer: &[Vec<Point>], dim: usize) -> Result<(), String> {
    let mut d = Reader::new(data);
    d.magic(MAGIC_DATA, "the data file")?;
    let ddim = d.usize("the data dimension")?;
    if ddim != dim {
        return Err(format!(
            "the data file has dimension {ddim}, the graph {dim}"
        ));
    }
    let bytes = dim * 4;
    for p in by_layer.iter().flatten() {
        d.magic(MAGIC_DATA, &format!("the data of point {}", p.origin))?;
        let origin = d.u64("a data id")?;
        if origin != p.origin as u64 {
            return Err(format!(
                "the data file holds point {origin} where the graph has {}",
                p.origin
            ));
        }
        let len = d.u64("a data length")?;
        if len != bytes as u64 {
            return Err(format!(
                "point {origin} has {len} data bytes (dimension {dim} needs {bytes})"
            ));
        }
        let values = d.take(bytes, "a data vector")?;
        if values
            .chunks_exact(4)
            .any(|c| !f32::from_ne_bytes([c[0], c[1], c[2], c[3]]).is_finite())
        {
            return Err(format!("point {origin} holds a non-finite value"));
        }
    }
    d.end("last point")
}

/// Reads and checks the dump `basename` in `dir`; an error names the file at fault.
pub fn read(dir: &Path, basename: &str, expected: Expected) -> Result<Links, (String, String)> {
    let [graph_name, data_name] = dump_files(basename);
    let read =
        |name: &String| std::fs::read(dir.join(name)).map_err(|e| (name.clone(), e.to_string()));
    parse(&read(&graph_name)?, &read(&data_name)?, expected).map_err(|(file, m)| match file {
        DumpFile::Graph => (graph_name.clone(), m),
        DumpFile::Data => (data_name.clone(), m),
    })
}

/// Writes the adjacency `links` over `data` (node `i` is row `i`, `dim` wide, unit
/// rows) as hnsw_rs's full dump (format 4, native byte order): `<basename>.hnsw.graph`
/// and `.hnsw.data` in `dir`, so that hnsw_rs's own loader reads what vitrine builds.
/// Each list is written nearest first with its distances `1 − a·b` (clamped to
/// `[0, 2]`), as hnsw_rs keeps them; `distance` is the distance type's name (hnsw_rs
/// records `std::any::type_name` of it), `ef_construction` is recorded as hnsw_rs
/// records it.
pub fn write(
    dir: &Path,
    basename: &str,
    links: &Links,
    data: &[f32],
    dim: usize,
    ef_construction: usize,
    distance: &str,
) -> std::io::Result<()> {
    use std::io::{BufWriter, Write};
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let n = links.nodes;
    if n == 0 || dim == 0 || data.len() != n * dim {
        return Err(invalid(format!(
            "{} values for a graph of {n} nodes of dimension {dim}",
            data.len()
        )));
    }
    let m = u8::try_from(links.m)
        .ok()
        .filter(|&m| m >= 2)
        .ok_or_else(|| invalid(format!("m = {} (2..=255)", links.m)))?;
    // Per node: its links per layer (it sits on the top one).
    let mut lists: Vec<Option<&Vec<Vec<u32>>>> = vec![None; n];
    for (id, l) in &links.lists {
        let slot = lists
            .get_mut(*id)
            .ok_or_else(|| invalid(format!("node id {id} is outside 0..{n}")))?;
        if slot.replace(l).is_some() || l.is_empty() || l.len() > MAX_LAYERS {
            return Err(invalid(format!("node {id} is listed twice or on no layer")));
        }
        if let Some(&bad) = l.iter().flatten().find(|&&nb| nb as usize >= n) {
            return Err(invalid(format!("a link to node {bad} is outside 0..{n}")));
        }
    }
    let lists: Vec<&Vec<Vec<u32>>> = lists
        .into_iter()
        .enumerate()
        .map(|(id, l)| l.ok_or_else(|| invalid(format!("node {id} is missing"))))
        .collect::<Result<_, _>>()?;
    let level = |id: u32| lists[id as usize].len() - 1;
    // hnsw_rs files points layer by layer; a link names the record (layer, rank).
    let mut by_layer: Vec<Vec<u32>> = vec![Vec::new(); MAX_LAYERS];
    let mut rank = vec![0i32; n];
    for id in 0..n as u32 {
        rank[id as usize] = by_layer[level(id)].len() as i32;
        by_layer[level(id)].push(id);
    }
    let row = |id: u32| &data[id as usize * dim..(id as usize + 1) * dim];
    let record = |w: &mut BufWriter<std::fs::File>, id: u32| -> std::io::Result<()> {
        w.write_all(&(id as usize).to_ne_bytes())?;
        w.write_all(&[level(id) as u8])?;
        w.write_all(&rank[id as usize].to_ne_bytes())
    };
    let name = |w: &mut BufWriter<std::fs::File>, s: &str| -> std::io::Result<()> {
        w.write_all(&s.len().to_ne_bytes())?;
        w.write_all(s.as_bytes())
    };
    let [graph_name, data_name] = dump_files(basename);
    let mut g = BufWriter::new(std::fs::File::create(dir.join(graph_name))?);
    let mut d = BufWriter::new(std::fs::File::create(dir.join(data_name))?);
    g.write_all(&MAGIC_DESCR_4.to_ne_bytes())?;
    g.write_all(&[1, m])?;
    g.write_all(&(1.0 / f64::from(m).ln()).to_ne_bytes())?;
    g.write_all(&[MAX_LAYERS as u8])?;
    for v in [ef_construction, n, dim] {
        g.write_all(&v.to_ne_bytes())?;
    }
    name(&mut g, distance)?;
    name(&mut g, std::any::type_name::<f32>())?;
    d.write_all(&MAGIC_DATA.to_ne_bytes())?;
    d.write_all(&dim.to_ne_bytes())?;
    g.write_all(&[MAX_LAYERS as u8])?;
    let mut list: Vec<(f32, u32)> = Vec::new();
    for layer in &by_layer {
        g.write_all(&MAGIC_LAYER.to_ne_bytes())?;
        g.write_all(&layer.len().to_ne_bytes())?;
        for &id in layer {
            g.write_all(&MAGIC_POINT.to_ne_bytes())?;
            record(&mut g, id)?;
            for l in 0..MAX_LAYERS {
                list.clear();
                let layer_links = lists[id as usize].get(l).map_or(&[][..], Vec::as_slice);
                list.extend(layer_links.iter().map(|&nb| {
                    let d = 1.0 - vitrine_kernels::dot::dot(row(id), row(nb));
                    (d.clamp(0.0, 2.0), nb)
                }));
                list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                g.write_all(&list.len().to_ne_bytes())?;
                for &(dist, nb) in &list {
                    record(&mut g, nb)?;
                    g.write_all(&dist.to_ne_bytes())?;
                }
            }
            d.write_all(&MAGIC_DATA.to_ne_bytes())?;
            d.write_all(&u64::from(id).to_ne_bytes())?;
            d.write_all(&((dim * 4) as u64).to_ne_bytes())?;
            for v in row(id) {
                d.write_all(&v.to_ne_bytes())?;
            }
        }
    }
    if links.entry as usize >= n || level(links.entry) != links.top_level {
        return Err(invalid(format!(
            "entry point {} is not a node of the top layer {}",
            links.entry, links.top_level
        )));
    }
    record(&mut g, links.entry)?;
    g.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    d.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::{self, Graph, GraphParams, Visited};

    /// [`parse`] into the searchable graph, as [`hnsw::read_graph`] reads files.
    fn parsed(graph: &[u8], data: &[u8], expected: Expected) -> Result<Graph, (DumpFile, String)> {
        let links = parse(graph, data, expected)?;
        Graph::from_dump(links).map_err(|m| (DumpFile::Graph, m))
    }

    /// A real dump of `n` unit vectors of dimension 4.
    fn dump(n: usize) -> (Vec<f32>, Vec<u8>, Vec<u8>) {
        let data: Vec<f32> = (0..n * 4)
            .map(|i| ((i * 7919 % 97) as f32 / 97.0) - 0.5)
            .collect::<Vec<_>>()
            .chunks(4)
            .flat_map(|r| {
                let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter().map(move |x| x / norm).collect::<Vec<_>>()
            })
            .collect();
        let params = GraphParams {
            m: 8,
            ef_construction: 32,
        };
        let index = hnsw::new_index(params, n).expect("index");
        hnsw::insert_rows(&index, &data, 4, 0, false);
        let dir = tempfile::tempdir().expect("tempdir");
        let base = hnsw::dump(&index, dir.path(), "g").expect("dump");
        let [g, d] = dump_files(&base);
        let read = |f: &str| std::fs::read(dir.path().join(f)).expect("read");
        (data, read(&g), read(&d))
    }

    const EXPECTED: Expected = Expected { count: 50, dim: 4 };

    #[test]
    fn a_real_dump_reads_into_the_same_graph_as_hnsw_rs_builds() {
        let (data, graph, values) = dump(50);
        let ours = parsed(&graph, &values, EXPECTED).expect("parse");
        assert_eq!(ours.len(), 50);
        // Every row finds itself through the graph read here.
        let recall = hnsw::self_recall(&ours, &data, 4, 50, 32);
        assert!(recall > 0.95, "self-recall {recall}");
        let q = &data[8..12];
        let hits = ours.search(
            |j| hnsw::dot(q, &data[j as usize * 4..j as usize * 4 + 4]),
            10,
            &mut Visited::default(),
        );
        assert_eq!(hits[0].0, 2);
    }

    #[test]
    fn crafted_dumps_are_errors_not_panics() {
        let (_, graph, values) = dump(50);
        // Wrong counts and dimensions against the header.
        for expected in [
            Expected { count: 49, dim: 4 },
            Expected { count: 50, dim: 5 },
        ] {
            let (_, e) = parsed(&graph, &values, expected).expect_err("mismatch");
            assert!(e.contains("dimension"), "{e}");
        }
        // Bad magic.
        let mut bad = graph.clone();
        bad[0] ^= 0xff;
        assert!(
            parsed(&bad, &values, EXPECTED)
                .expect_err("magic")
                .1
                .contains("magic")
        );
        // Every truncation of either file.
        for cut in (0..graph.len()).step_by(7) {
            assert!(
                parsed(&graph[..cut], &values, EXPECTED).is_err(),
                "graph cut {cut}"
            );
        }
        for cut in (0..values.len()).step_by(5) {
            assert!(
                parsed(&graph, &values[..cut], EXPECTED).is_err(),
                "data cut {cut}"
            );
        }
        // A huge point count in the header, a data dimension that disagrees with the
        // data's length (hnsw_rs reads out of bounds on it), a trailing byte.
        // magic, mode, m, level scale, layers, ef, then the point count.
        let count_at = 4 + 1 + 1 + 8 + 1 + 8;
        let mut huge = graph.clone();
        huge[count_at..count_at + 8].copy_from_slice(&(1u64 << 62).to_ne_bytes());
        assert!(parsed(&huge, &values, EXPECTED).is_err());
        let mut wide = values.clone();
        wide[4..12].copy_from_slice(&1_000_000u64.to_ne_bytes());
        assert!(
            parsed(&graph, &wide, EXPECTED).expect_err("dim")
                == (
                    DumpFile::Data,
                    "the data file has dimension 1000000, the graph 4".into()
                )
        );
        let mut longer = graph.clone();
        longer.push(0);
        assert!(
            parsed(&longer, &values, EXPECTED)
                .expect_err("tail")
                .1
                .contains("unexpected")
        );
        // Single-byte corruption anywhere: an error or a graph, never a panic, and
        // never a node id outside the index.
        for at in 0..graph.len() {
            let mut flipped = graph.clone();
            flipped[at] ^= 0x5a;
            if let Ok(g) = parsed(&flipped, &values, EXPECTED) {
                assert_eq!(g.len(), 50);
            }
        }
    }
}
