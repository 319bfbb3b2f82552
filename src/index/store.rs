//! The index folder, `RUN/index/`:
//!
//! ```text
//! header.json          format, dim, count, distance, checkpoint fingerprint, graph
//!                      settings, size and hash of every other file (written last)
//! embeddings.npy       count × dim float32, row-major (numpy.load reads it)
//! entries.json         per row: id, path, item_id, category
//! graph.hnsw.graph     hnsw_rs dump of the HNSW graph
//! graph.hnsw.data      (basename recorded in the header)
//! ```
//!
//! A new index is written into a sibling temporary folder and swapped in with
//! renames (`index` → `index.old`, temporary → `index`, then `index.old` removed):
//! a crash at any moment leaves a complete index under `index/` or, between the two
//! renames, under `index.old/`, which readers fall back to and the next write
//! restores.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::hnsw::{self, Graph, GraphError, GraphParams, HnswIndex};
use super::hnsw_dump;
use super::hnsw_insert;
use super::npy::{self, Matrix, NpyError};
use super::rerank::VectorIndex;
use super::tune::EfChoice;
use crate::config::IndexBuilder;

pub const FORMAT: u32 = 1;
pub const HEADER_FILE: &str = "header.json";
pub const EMBEDDINGS_FILE: &str = "embeddings.npy";
pub const ENTRIES_FILE: &str = "entries.json";
pub const GRAPH_BASENAME: &str = "graph";
pub const DISTANCE: &str = "cosine";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no index at {}: build it with `vitrine index --run {}`", dir.display(), run_of(dir).display())]
    Missing { dir: PathBuf },
    #[error("{}: {message}; rebuild it with `vitrine index --run {}`", path.display(), run_of(path.parent().unwrap_or(path)).display())]
    Corrupt { path: PathBuf, message: String },
    #[error("{}: index format {found} is not supported (this vitrine reads format {FORMAT}); rebuild it with `vitrine index`", path.display())]
    Format { path: PathBuf, found: u32 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: the index is being written by {}; try again when it has finished", dir.display(), pid.map_or_else(|| "another process".to_string(), |p| format!("process {p}")))]
    Busy { dir: PathBuf, pid: Option<u32> },
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The run folder above `RUN/index` (for messages).
fn run_of(dir: &Path) -> PathBuf {
    dir.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Size and content hash of one file of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub bytes: u64,
    /// 16 hex digits of [`content_hash`].
    pub hash: String,
}

/// Where the gallery came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceRecord {
    /// A DeepFashion-layout dataset and its gallery protocol.
    Dataset { root: String, protocol: String },
    /// Every image under a folder tree.
    Folder { root: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphRecord {
    /// hnsw_rs dump basename (`<basename>.hnsw.graph`, `.hnsw.data`).
    pub basename: String,
    pub m: usize,
    pub ef_construction: usize,
    /// Share of sampled rows that find themselves first, measured after building.
    pub self_recall: f64,
    /// The smallest search beam found to reach `index.target_recall` on a sample of
    /// the gallery ([`super::tune`]); searches use it unless `index.ef_search` is set.
    /// Absent from indexes built before vitrine measured it: they search with the
    /// shortlist as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_ef: Option<EfChoice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexHeader {
    pub format: u32,
    pub dim: usize,
    pub count: usize,
    /// Always `cosine` (unit vectors; scores are cosine similarities).
    pub distance: String,
    /// [`crate::model::checkpoint::fingerprint`] of the weights that embedded it.
    pub fingerprint: String,
    /// The checkpoint file (empty for an untrained model).
    pub checkpoint: String,
    pub backbone: String,
    pub image_size: u32,
    /// Galleries indexed, in order (`--add` appends one).
    pub sources: Vec<SourceRecord>,
    pub graph: GraphRecord,
    /// Every other file of the folder.
    pub files: BTreeMap<String, FileRecord>,
    /// Seconds since the Unix epoch.
    pub created: f64,
}

/// One gallery image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: usize,
    pub path: String,
    /// The dataset's item id, or the image's folder name for a plain folder.
    pub item_id: String,
    /// `BIG/Small` category for a dataset image, empty for a plain folder.
    pub category: String,
}

/// A loaded index.
#[derive(Debug)]
pub struct Index {
    pub header: IndexHeader,
    pub entries: Vec<Entry>,
    pub vectors: VectorIndex,
}

/// A fast 64-bit content hash (FNV-style over 8-byte words, with rotation).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(23);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn record(path: &Path) -> Result<FileRecord, IndexError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    Ok(FileRecord {
        bytes: bytes.len() as u64,
        hash: format!("{:016x}", content_hash(&bytes)),
    })
}

/// `index.old` beside `dir`.
fn old_dir(dir: &Path) -> PathBuf {
    sibling(dir, "old")
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// The folder to read: `dir`, or `dir.old` left by a crash between the renames.
pub fn readable_dir(dir: &Path) -> PathBuf {
    if !dir.join(HEADER_FILE).is_file() && old_dir(dir).join(HEADER_FILE).is_file() {
        old_dir(dir)
    } else {
        dir.to_path_buf()
    }
}

/// Temporary folders of earlier writes that died: ours, and `index.tmp-PID` of
/// older versions. Called with the index lock held.
fn remove_stale_temps(parent: &Path, dir: &Path) {
    crate::fsutil::remove_stale_temps(parent);
    let prefix = format!(
        "{}.tmp-",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dead = name
            .strip_prefix(&prefix)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !crate::pid::alive(pid));
        if dead {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Held while an index is built or extended: an OS lock on `index.lock` beside the
/// folder, so that two writers (the dashboard and `index --add`) cannot both read
/// the old index and lose one's update. Released however the holder exits.
#[derive(Debug)]
pub struct IndexLock {
    file: fs::File,
}

impl Drop for IndexLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Takes the write lock of the index in `dir`, or says who holds it.
pub fn lock(dir: &Path) -> Result<IndexLock, IndexError> {
    use std::io::{Seek, Write};
    let path = sibling(dir, "lock");
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            // The holder writes its PID right after taking the lock.
            let holder = crate::pid::holder(&file, std::time::Duration::from_secs(1), || true);
            return Err(IndexError::Busy {
                dir: dir.to_path_buf(),
                pid: holder.pid(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(io_err(&path))?;
    Ok(IndexLock { file })
}

/// The graph [`write`] files: an hnsw_rs index (dumped by hnsw_rs) or a graph built
/// by [`hnsw_insert`] over the index's vectors (dumped by [`hnsw_dump::write`] in
/// the same format).
#[derive(Clone, Copy)]
pub enum GraphSource<'a, 'b: 'a> {
    HnswRs(&'a HnswIndex<'b>),
    Vitrine {
        graph: &'a Graph,
        ef_construction: usize,
    },
}

impl<'a, 'b> From<&'a HnswIndex<'b>> for GraphSource<'a, 'b> {
    fn from(index: &'a HnswIndex<'b>) -> Self {
        Self::HnswRs(index)
    }
}

/// Writes a complete index into `dir` (replacing any previous one atomically).
/// `header.files`, `graph.basename`, `count` and `dim` are filled in here.
pub fn write<'a, 'b: 'a>(
    dir: &Path,
    mut header: IndexHeader,
    entries: &[Entry],
    vectors: &Matrix,
    graph: impl Into<GraphSource<'a, 'b>>,
) -> Result<IndexHeader, IndexError> {
    let graph = graph.into();
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    // A crash between the renames of a previous write left only `index.old`.
    let old = old_dir(dir);
    if !dir.exists() && old.join(HEADER_FILE).is_file() {
        fs::rename(&old, dir).map_err(io_err(dir))?;
    }
    remove_stale_temps(parent, dir);
    // A fresh, unpredictable name, created here (never an existing path or link).
    let tmp = crate::fsutil::temp_path(dir);
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        let npy_path = tmp.join(EMBEDDINGS_FILE);
        npy::save(&npy_path, vectors).map_err(io_err(&npy_path))?;
        let entries_path = tmp.join(ENTRIES_FILE);
        let json = serde_json::to_vec(entries).map_err(|e| IndexError::Io {
            path: entries_path.clone(),
            source: io::Error::other(e),
        })?;
        crate::fsutil::write_bytes_atomic(&entries_path, &json).map_err(io_err(&entries_path))?;
        for name in hnsw_dump::dump_files(GRAPH_BASENAME) {
            let path = tmp.join(name);
            crate::fsutil::fault_write(&path).map_err(io_err(&path))?;
        }
        let basename = match graph {
            GraphSource::HnswRs(index) => hnsw::dump(index, &tmp, GRAPH_BASENAME)?,
            GraphSource::Vitrine {
                graph,
                ef_construction,
            } => {
                hnsw::write_dump(
                    &tmp,
                    GRAPH_BASENAME,
                    graph,
                    &vectors.data,
                    vectors.cols,
                    ef_construction,
                )
                .map_err(|e| GraphError::Dump {
                    dir: tmp.clone(),
                    message: e.to_string(),
                })?;
                GRAPH_BASENAME.to_string()
            }
        };
        let mut files = BTreeMap::new();
        let mut names = vec![EMBEDDINGS_FILE.to_string(), ENTRIES_FILE.to_string()];
        names.extend(hnsw_dump::dump_files(&basename));
        for name in names {
            let path = tmp.join(&name);
            if let Ok(f) = fs::File::open(&path) {
                f.sync_all().map_err(io_err(&path))?;
            }
            files.insert(name, record(&path)?);
        }
        header.format = FORMAT;
        header.count = vectors.rows;
        header.dim = vectors.cols;
        header.distance = DISTANCE.into();
        header.graph.basename = basename;
        header.files = files;
        let header_path = tmp.join(HEADER_FILE);
        let text = serde_json::to_vec_pretty(&header).map_err(|e| IndexError::Io {
            path: header_path.clone(),
            source: io::Error::other(e),
        })?;
        crate::fsutil::write_bytes_atomic(&header_path, &text).map_err(io_err(&header_path))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    swap_in(&tmp, dir, &old, parent)?;
    Ok(header)
}

/// Puts the complete folder `tmp` in place of `dir` (in `parent`): the old one stays
/// whole under `old` until the new one is in, so a crash leaves one or the other.
pub(crate) fn swap_in(tmp: &Path, dir: &Path, old: &Path, parent: &Path) -> Result<(), IndexError> {
    if old.exists() {
        fs::remove_dir_all(old).map_err(io_err(old))?;
    }
    if dir.exists() {
        fs::rename(dir, old).map_err(io_err(dir))?;
    }
    fs::rename(tmp, dir).map_err(io_err(dir))?;
    crate::fsutil::sync_dir(parent).map_err(io_err(parent))?;
    if old.exists() {
        let _ = fs::remove_dir_all(old);
    }
    Ok(())
}

/// Reads and checks `dir/header.json` (or the `.old` fallback).
pub fn read_header(dir: &Path) -> Result<IndexHeader, IndexError> {
    let dir = readable_dir(dir);
    let path = dir.join(HEADER_FILE);
    if !path.is_file() {
        return Err(IndexError::Missing { dir });
    }
    let text = fs::read_to_string(&path).map_err(|e| IndexError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| IndexError::Corrupt {
            path: path.clone(),
            message: format!("unreadable header: {e}"),
        })?;
    let format = value
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0) as u32;
    if format != FORMAT {
        return Err(IndexError::Format {
            path,
            found: format,
        });
    }
    serde_json::from_value(value).map_err(|e| IndexError::Corrupt {
        path,
        message: format!("unreadable header: {e}"),
    })
}

/// Loads the index in `dir`, checking every file against the header first.
pub fn load(dir: &Path) -> Result<Index, IndexError> {
    let header = read_header(dir)?;
    let dir = readable_dir(dir);
    let corrupt = |name: &str, message: String| IndexError::Corrupt {
        path: dir.join(name),
        message,
    };
    let mut wanted = vec![EMBEDDINGS_FILE.to_string(), ENTRIES_FILE.to_string()];
    wanted.extend(hnsw_dump::dump_files(&header.graph.basename));
    for name in &wanted {
        let Some(expected) = header.files.get(name) else {
            return Err(corrupt(HEADER_FILE, format!("no record of {name}")));
        };
        let path = dir.join(name);
        if !path.is_file() {
            return Err(corrupt(name, "the file is missing".into()));
        }
        let got = record(&path)?;
        if &got != expected {
            return Err(corrupt(
                name,
                format!(
                    "damaged: {} bytes with hash {}, the header expects {} bytes with hash {}",
                    got.bytes, got.hash, expected.bytes, expected.hash
                ),
            ));
        }
    }
    let vectors = npy::load(&dir.join(EMBEDDINGS_FILE))?;
    if vectors.rows != header.count || vectors.cols != header.dim {
        return Err(corrupt(
            EMBEDDINGS_FILE,
            format!(
                "shape ({}, {}) differs from the header's ({}, {})",
                vectors.rows, vectors.cols, header.count, header.dim
            ),
        ));
    }
    // NaN would poison every ranking it enters (and scores print as null).
    if let Some(at) = vectors.data.iter().position(|v| !v.is_finite()) {
        return Err(corrupt(
            EMBEDDINGS_FILE,
            format!("row {} holds a non-finite value", at / vectors.cols.max(1)),
        ));
    }
    let entries_path = dir.join(ENTRIES_FILE);
    let entries: Vec<Entry> = fs::read(&entries_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|m| corrupt(ENTRIES_FILE, m))?;
    if entries.len() != header.count {
        return Err(corrupt(
            ENTRIES_FILE,
            format!("{} entries for {} vectors", entries.len(), header.count),
        ));
    }
    // Our own bounds-checked reader: hnsw_rs's loader trusts the file.
    let expected = hnsw_dump::Expected {
        count: header.count,
        dim: header.dim,
    };
    let graph = hnsw::read_graph(&dir, &header.graph.basename, expected)
        .map_err(|(file, m)| corrupt(&file, m))?;
    Ok(Index {
        header,
        entries,
        vectors: VectorIndex::new(vectors, graph),
    })
}

/// Builds an hnsw_rs graph over `vectors` (parallel insertion), its flat copy, and
/// the self-recall of a sample of rows; when that falls below 0.99 the graph is
/// rebuilt once serially (deterministic) and the better one kept.
pub fn build_graph<'b>(
    vectors: &Matrix,
    params: GraphParams,
    ef_check: usize,
) -> Result<(HnswIndex<'b>, Graph, f64), IndexError> {
    let build = |parallel: bool| -> Result<(HnswIndex<'b>, Graph, f64), IndexError> {
        let index = hnsw::new_index(params, vectors.rows)?;
        hnsw::insert_rows(&index, &vectors.data, vectors.cols, 0, parallel);
        let graph = Graph::from_hnsw(&index).map_err(|m| IndexError::Corrupt {
            path: PathBuf::from("<new graph>"),
            message: m,
        })?;
        let recall = hnsw::self_recall(&graph, &vectors.data, vectors.cols, 1000, ef_check);
        Ok((index, graph, recall))
    };
    let first = build(true)?;
    if first.2 >= 0.99 {
        return Ok(first);
    }
    tracing::warn!(
        "HNSW self-recall after a parallel build is {:.4}; rebuilding serially",
        first.2
    );
    let second = build(false)?;
    Ok(if second.2 >= first.2 { second } else { first })
}

/// A new graph over `vectors` from [`build_graph_with`]: the hnsw_rs index when
/// hnsw_rs built it, the searchable graph, and its self-recall.
pub struct BuiltGraph<'b> {
    pub builder: IndexBuilder,
    pub hnsw: Option<HnswIndex<'b>>,
    pub graph: Graph,
    pub self_recall: f64,
}

impl<'b> BuiltGraph<'b> {
    /// What [`write`] files.
    pub fn source(&self, params: GraphParams) -> GraphSource<'_, 'b> {
        match &self.hnsw {
            Some(index) => GraphSource::HnswRs(index),
            None => GraphSource::Vitrine {
                graph: &self.graph,
                ef_construction: params.ef_construction,
            },
        }
    }
}

/// Builds the graph over `vectors` with `builder` (parallel insertion) and measures
/// its self-recall; when that falls below 0.99 the graph is rebuilt once serially
/// (deterministic) and the better one kept.
pub fn build_graph_with<'b>(
    vectors: &Matrix,
    params: GraphParams,
    ef_check: usize,
    builder: IndexBuilder,
) -> Result<BuiltGraph<'b>, IndexError> {
    match builder {
        IndexBuilder::HnswRs => {
            let (index, graph, self_recall) = build_graph(vectors, params, ef_check)?;
            Ok(BuiltGraph {
                builder,
                hnsw: Some(index),
                graph,
                self_recall,
            })
        }
        IndexBuilder::Vitrine => {
            let build = |parallel: bool| -> Result<(Graph, f64), IndexError> {
                let graph = hnsw_insert::build(&vectors.data, vectors.cols, params, parallel)?;
                let recall = hnsw::self_recall(&graph, &vectors.data, vectors.cols, 1000, ef_check);
                Ok((graph, recall))
            };
            let mut best = build(true)?;
            if best.1 < 0.99 {
                tracing::warn!(
                    "HNSW self-recall after a parallel build is {:.4}; rebuilding serially",
                    best.1
                );
                let second = build(false)?;
                if second.1 >= best.1 {
                    best = second;
                }
            }
            Ok(BuiltGraph {
                builder,
                hnsw: None,
                graph: best.0,
                self_recall: best.1,
            })
        }
    }
}
