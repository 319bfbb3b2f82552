//! Indexing into PostgreSQL: embed (all of the gallery, or one deterministic shard of
//! it) and stream the rows with binary COPY into a version being loaded; once every
//! shard is in, build pgvector's HNSW index, make the version live by pointing the
//! view at it in one transaction, drop the versions it replaces, and write
//! `RUN/index/postgres.json`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use postgres::Client;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use serde::Serialize;

use super::connect::{connect, error};
use super::record::{self, PgRecord};
use super::schema::{self, CheckError, Names};
use super::{PgError, PgUrl};
use crate::config::IndexConfig;
use crate::fsutil::absolute;
use crate::index::build::{BuildError, IndexJob, collect, embed_to_matrix, loader_config, now};
use crate::index::model::load_model;
use crate::index::store::{self, Entry, SourceRecord};
use crate::run::folder::RunDir;

/// Where a gallery goes: a server and the gallery's name there.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub url: PgUrl,
    pub table: String,
}

/// `--shard I/N`: the I-th of N equal slices of the gallery's listing (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}`: expected I/N with 1 <= I <= N <= 10000, e.g. 2/8");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index == 0 || index > count || count > 10_000 {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The positions of the listing this shard embeds: contiguous, and together the
    /// N shards cover `0..len` exactly once.
    pub fn range(&self, len: usize) -> Range<usize> {
        let at = |i: u32| (len as u128 * u128::from(i) / u128::from(self.count)) as usize;
        at(self.index - 1)..at(self.index)
    }
}

/// What an indexing job into PostgreSQL did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PgIndexReport {
    /// URL without password.
    pub url: String,
    pub table: String,
    pub version: i32,
    /// `I/N` of this job, or `None` for a whole gallery.
    pub shard: Option<String>,
    /// Rows this job added.
    pub added: usize,
    /// Images that could not be read (skipped).
    pub unreadable: usize,
    /// Rows in the version now.
    pub count: usize,
    pub dim: usize,
    /// Shards in the version now, and expected.
    pub shards_done: Vec<u32>,
    pub shards: u32,
    pub embed_seconds: f64,
    /// Binary COPY (overlapping the embedding, which feeds it chunk by chunk).
    pub copy_seconds: f64,
    /// HNSW build (0 until the version is finalised).
    pub build_seconds: f64,
    /// Whether the version is live (searchable) now.
    pub live: bool,
    /// Versions dropped when this one went live.
    pub dropped: Vec<i32>,
    pub fingerprint: String,
    pub checkpoint: String,
    /// `RUN/index/`, once the version is live.
    pub dir: Option<PathBuf>,
}

pub(super) fn refused(url: &PgUrl) -> impl Fn(CheckError) -> PgError + '_ {
    move |e| match e {
        CheckError::Sql(e) => error(url, &e),
        CheckError::Refused(e) => e,
    }
}

/// A version row's description of its content.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct VersionMeta {
    pub(super) fingerprint: String,
    pub(super) checkpoint: String,
    pub(super) backbone: String,
    pub(super) image_size: i32,
    pub(super) dim: i32,
    /// JSON of the [`SourceRecord`].
    pub(super) source: String,
    /// Count and hash of the gallery's listing: shards must slice the same one.
    pub(super) listing: String,
    pub(super) shards: i32,
    pub(super) m: i32,
    pub(super) ef_construction: i32,
}

/// Count and content hash of a listing of paths.
fn listing_id(entries: &[Entry]) -> String {
    let mut text = String::new();
    for e in entries {
        text.push_str(&e.path);
        text.push('\n');
    }
    format!(
        "{} images, {:016x}",
        entries.len(),
        crate::fsutil::fnv1a64(text.as_bytes())
    )
}

/// pgvector's HNSW limits: m in 2..=100, ef_construction in 2·m..=1000.
fn hnsw_settings(settings: &IndexConfig) -> (i32, i32) {
    let m = settings.m.clamp(2, 100);
    let ef = settings.ef_construction.clamp(2 * m, 1000);
    if m != settings.m || ef != settings.ef_construction {
        tracing::warn!(
            "pgvector's HNSW takes m 2..=100 and ef_construction 2·m..=1000: using m {m}, ef_construction {ef}"
        );
    }
    (m as i32, ef as i32)
}

/// Embeds the job's gallery, or `shard` of it, into PostgreSQL. Without a shard the
/// version goes live at once (and `RUN/index/` records it); with one, it waits for
/// the other shards and `--finalize`.
pub fn index(
    job: &IndexJob,
    target: &PgTarget,
    shard: Option<Shard>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PgIndexReport, BuildError> {
    let url = &target.url;
    let names = Names::new(&target.table);
    let dir = RunDir::new(&job.run).index_dir();
    // A whole-gallery job replaces RUN/index/: hold its lock from the start.
    let lock = match shard {
        None => Some(store::lock(&dir)?),
        Some(_) => None,
    };
    let mut client = connect(url)?;
    schema::ensure_versions(&mut client, &names, &url.shown()).map_err(refused(url))?;
    let model = load_model(&job.run, Some(&job.checkpoint))?;
    let (specs, entries, source) = collect(&job.gallery, &job.data)?;
    if specs.is_empty() {
        return Err(BuildError::Empty(format!("{source:?} has no images")));
    }
    let (m, ef_construction) = hnsw_settings(&job.settings);
    let meta = VersionMeta {
        fingerprint: model.fingerprint.clone(),
        checkpoint: model
            .checkpoint
            .as_deref()
            .map(|p| absolute(p).to_string_lossy().into_owned())
            .unwrap_or_default(),
        backbone: model.config.model.backbone.to_string(),
        image_size: model.config.model.image_size as i32,
        dim: model.embedder.config().embedding_dim as i32,
        source: serde_json::to_string(&source).unwrap_or_default(),
        listing: listing_id(&entries),
        shards: shard.map_or(1, |s| s.count as i32),
        m,
        ef_construction,
    };
    let this = shard.unwrap_or(Shard { index: 1, count: 1 });
    let version = open_version(&mut client, &names, url, &meta, this, shard.is_none())?;
    let range = this.range(specs.len());
    let vector_type = vector_type(&mut client, url)?;
    let started = Instant::now();
    let mut copy_seconds = 0.0;
    let mut tx = client.transaction().map_err(|e| error(url, &e))?;
    let (added, unreadable) = {
        let sink = tx
            .copy_in(&format!(
                "COPY {} (id, path, item_id, category, shard, embedding) FROM STDIN BINARY",
                names.data(version)
            ))
            .map_err(|e| error(url, &e))?;
        let types = [
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT4,
            vector_type,
        ];
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        let loader = loader_config(&model, &job.data);
        let batch = job.settings.batch.max(1);
        // Chunks of whole batches: rows stream to the server while the next chunk
        // embeds, and memory stays bounded whatever the gallery's size.
        let chunk = batch * 16;
        let total = range.len();
        let (mut added, mut unreadable) = (0usize, 0usize);
        let shard_no = this.index as i32;
        for start in range.clone().step_by(chunk) {
            let end = (start + chunk).min(range.end);
            let base = start - range.start;
            let (vectors, kept, bad) =
                embed_to_matrix(&model, &specs[start..end], loader, batch, &mut |d, _| {
                    progress(base + d, total);
                })?;
            unreadable += bad;
            let t = Instant::now();
            for (row, &k) in vectors.iter_rows().zip(&kept) {
                let e = &entries[start + k];
                let id = (start + k) as i64;
                let v = pgvector::Vector::from(row.to_vec());
                writer
                    .write(&[&id, &e.path, &e.item_id, &e.category, &shard_no, &v])
                    .map_err(|e| error(url, &e))?;
            }
            copy_seconds += t.elapsed().as_secs_f64();
            added += kept.len();
        }
        let t = Instant::now();
        writer.finish().map_err(|e| error(url, &e))?;
        copy_seconds += t.elapsed().as_secs_f64();
        (added, unreadable)
    };
    // This shard's rows and its "done" mark commit together: a job that dies leaves
    // nothing of its shard behind, and running it again is safe.
    let marked = tx
        .execute(
            &format!(
                "UPDATE {} SET shards_done = array_append(shards_done, $2), rows = rows + $3 \
                 WHERE version = $1 AND state = 'loading' AND NOT ($2 = ANY(shards_done))",
                names.versions()
            ),
            &[&version, &(this.index as i32), &(added as i64)],
        )
        .map_err(|e| error(url, &e))?;
    if marked != 1 {
        return Err(PgError::ShardDone {
            url: url.shown(),
            table: names.base.clone(),
            version,
            shard: this.index,
            shards: this.count,
        }
        .into());
    }
    tx.commit().map_err(|e| error(url, &e))?;
    let embed_seconds = started.elapsed().as_secs_f64() - copy_seconds;
    let (count, shards_done) = version_progress(&mut client, &names, url, version)?;
    let mut report = PgIndexReport {
        url: url.shown(),
        table: names.base.clone(),
        version,
        shard: shard.map(|s| s.to_string()),
        added,
        unreadable,
        count,
        dim: meta.dim as usize,
        shards_done,
        shards: this.count,
        embed_seconds,
        copy_seconds,
        build_seconds: 0.0,
        live: false,
        dropped: Vec::new(),
        fingerprint: meta.fingerprint.clone(),
        checkpoint: meta.checkpoint.clone(),
        dir: None,
    };
    if shard.is_none() {
        let done = go_live(&mut client, &names, url, version, &job.run)?;
        report.build_seconds = done.build_seconds;
        report.dropped = done.dropped;
        report.live = true;
        report.dir = Some(dir);
    }
    drop(lock);
    Ok(report)
}

/// `--finalize`: builds the HNSW index of the version being loaded once every shard
/// is in, makes it live and records it in `run`'s `RUN/index/`.
pub fn finalize(run: &Path, target: &PgTarget) -> Result<PgIndexReport, BuildError> {
    let url = &target.url;
    let names = Names::new(&target.table);
    let dir = RunDir::new(run).index_dir();
    let _lock = store::lock(&dir)?;
    let mut client = connect(url)?;
    schema::ensure_versions(&mut client, &names, &url.shown()).map_err(refused(url))?;
    let row = client
        .query_opt(
            &format!(
                "SELECT version, shards, shards_done, fingerprint, checkpoint, dim \
                 FROM {} WHERE state = 'loading' ORDER BY version DESC LIMIT 1",
                names.versions()
            ),
            &[],
        )
        .map_err(|e| error(url, &e))?
        .ok_or_else(|| PgError::NothingToFinalize {
            url: url.shown(),
            table: names.base.clone(),
        })?;
    let version: i32 = row.get(0);
    let shards: i32 = row.get(1);
    let done: Vec<i32> = row.get(2);
    let missing: Vec<String> = (1..=shards)
        .filter(|i| !done.contains(i))
        .map(|i| format!("{i}/{shards}"))
        .collect();
    if !missing.is_empty() {
        return Err(PgError::MissingShards {
            url: url.shown(),
            table: names.base.clone(),
            version,
            shards: shards as u32,
            missing: format!(
                "shard{} {}",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            ),
        }
        .into());
    }
    let live = go_live(&mut client, &names, url, version, run)?;
    let (count, shards_done) = version_progress(&mut client, &names, url, version)?;
    Ok(PgIndexReport {
        url: url.shown(),
        table: names.base.clone(),
        version,
        shard: None,
        added: 0,
        unreadable: 0,
        count,
        dim: row.get::<_, i32>(5) as usize,
        shards_done,
        shards: shards as u32,
        embed_seconds: 0.0,
        copy_seconds: 0.0,
        build_seconds: live.build_seconds,
        live: true,
        dropped: live.dropped,
        fingerprint: row.get(3),
        checkpoint: row.get(4),
        dir: Some(dir),
    })
}

/// The type of pgvector's `vector` in this database (an extension type: its OID
/// differs between databases), as the server describes a parameter of that type.
pub fn vector_type(client: &mut Client, url: &PgUrl) -> Result<Type, PgError> {
    let stmt = client
        .prepare("SELECT $1::vector")
        .map_err(|e| error(url, &e))?;
    stmt.params()
        .first()
        .cloned()
        .ok_or_else(|| PgError::Other("the server described no vector parameter".into()))
}

/// The version this job loads into: for a whole gallery always a new one; for a
/// shard the newest version being loaded from the same weights, listing and shard
/// count, or a new one.
pub(super) fn open_version(
    client: &mut Client,
    names: &Names,
    url: &PgUrl,
    meta: &VersionMeta,
    shard: Shard,
    whole: bool,
) -> Result<i32, PgError> {
    let shown = url.shown();
    let sql = |e: postgres::Error| error(url, &e);
    let mut tx = client.transaction().map_err(sql)?;
    // Shard jobs starting together must agree on one version.
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        names.versions()
    ))
    .map_err(sql)?;
    if !whole {
        let newest = tx
            .query_opt(
                &format!(
                    "SELECT version, fingerprint, dim, source, listing, shards, shards_done \
                     FROM {} WHERE state = 'loading' ORDER BY version DESC LIMIT 1",
                    names.versions()
                ),
                &[],
            )
            .map_err(sql)?;
        if let Some(row) = newest {
            let version: i32 = row.get(0);
            let same = row.get::<_, String>(1) == meta.fingerprint
                && row.get::<_, i32>(2) == meta.dim
                && row.get::<_, String>(3) == meta.source
                && row.get::<_, String>(4) == meta.listing
                && row.get::<_, i32>(5) == meta.shards;
            if same {
                let done: Vec<i32> = row.get(6);
                if done.contains(&(shard.index as i32)) {
                    return Err(PgError::ShardDone {
                        url: shown,
                        table: names.base.clone(),
                        version,
                        shard: shard.index,
                        shards: shard.count,
                    });
                }
                tx.commit().map_err(sql)?;
                return Ok(version);
            }
            tracing::warn!(
                "version {version} of {} is being loaded from other weights, gallery or shard count; shard {shard} starts a new version (the older one is dropped when a newer one goes live)",
                names.base
            );
        }
    }
    let version: i32 = tx
        .query_one(
            &format!(
                "SELECT coalesce(max(version), 0) + 1 FROM {}",
                names.versions()
            ),
            &[],
        )
        .map_err(sql)?
        .get(0);
    tx.execute(
        &format!(
            "INSERT INTO {} (version, state, fingerprint, checkpoint, backbone, image_size, dim, \
             source, listing, shards, m, ef_construction) \
             VALUES ($1, 'loading', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            names.versions()
        ),
        &[
            &version,
            &meta.fingerprint,
            &meta.checkpoint,
            &meta.backbone,
            &meta.image_size,
            &meta.dim,
            &meta.source,
            &meta.listing,
            &meta.shards,
            &meta.m,
            &meta.ef_construction,
        ],
    )
    .map_err(sql)?;
    schema::create_data(&mut tx, names, version, meta.dim as usize, &shown)
        .map_err(refused(url))?;
    tx.commit().map_err(sql)?;
    Ok(version)
}

/// Rows and shards loaded into `version` so far.
fn version_progress(
    client: &mut Client,
    names: &Names,
    url: &PgUrl,
    version: i32,
) -> Result<(usize, Vec<u32>), PgError> {
    let row = client
        .query_one(
            &format!(
                "SELECT rows, shards_done FROM {} WHERE version = $1",
                names.versions()
            ),
            &[&version],
        )
        .map_err(|e| error(url, &e))?;
    let mut done: Vec<u32> = row
        .get::<_, Vec<i32>>(1)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    done.sort_unstable();
    Ok((row.get::<_, i64>(0) as usize, done))
}

struct Live {
    build_seconds: f64,
    dropped: Vec<i32>,
}

/// `maintenance_work_mem` for building the HNSW graph of `rows` `dim`-d vectors in
/// memory (pgvector slows down a lot once the graph outgrows it): about the vectors
/// plus the layer-0 links, with a margin; 64 MB at least, 4 GB at most.
fn build_memory_mb(rows: usize, dim: usize, m: usize) -> usize {
    let per_row = dim * 4 + 2 * m * 12 + 128;
    let mb = (rows * per_row).div_ceil(1 << 20) * 5 / 4;
    mb.clamp(64, 4096)
}

/// Builds the HNSW index (cosine) of `version`'s table, which holds `shape` = (rows,
/// dim); returns the seconds it took.
pub(super) fn build_hnsw(
    client: &mut Client,
    names: &Names,
    url: &PgUrl,
    version: i32,
    shape: (usize, usize),
    (m, ef): (i32, i32),
) -> Result<f64, PgError> {
    let data = names.data(version);
    let started = Instant::now();
    let memory = build_memory_mb(shape.0, shape.1, m as usize);
    client
        .batch_execute(&format!(
            "SET maintenance_work_mem = '{memory}MB';
             CREATE INDEX {data}_hnsw ON {data} USING hnsw (embedding vector_cosine_ops) \
             WITH (m = {m}, ef_construction = {ef});
             RESET maintenance_work_mem;
             ANALYZE {data};"
        ))
        .map_err(|e| error(url, &e))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Points the view at `version` and marks it live, in one transaction: the live
/// version and older ones being loaded become retired (dropped by the caller).
pub(super) fn swap_live(
    client: &mut Client,
    names: &Names,
    url: &PgUrl,
    version: i32,
) -> Result<(), PgError> {
    let sql = |e: postgres::Error| error(url, &e);
    let mut tx = client.transaction().map_err(sql)?;
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        names.versions()
    ))
    .map_err(sql)?;
    schema::point_view(&mut tx, names, version, &url.shown()).map_err(refused(url))?;
    tx.execute(
        &format!(
            "UPDATE {} SET state = CASE WHEN version = $1 THEN 'live' ELSE 'retired' END, \
             live_since = CASE WHEN version = $1 THEN now() ELSE live_since END \
             WHERE version = $1 OR state = 'live' OR (state = 'loading' AND version < $1)",
            names.versions()
        ),
        &[&version],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)
}

/// Builds `version`'s HNSW index, points the view at it, retires the live one, drops
/// the versions it replaces, and writes `run`'s `RUN/index/postgres.json`.
fn go_live(
    client: &mut Client,
    names: &Names,
    url: &PgUrl,
    version: i32,
    run: &Path,
) -> Result<Live, BuildError> {
    let shown = url.shown();
    let sql = |e: postgres::Error| error(url, &e);
    let row = client
        .query_one(
            &format!(
                "SELECT rows, dim, m, ef_construction, fingerprint, checkpoint, backbone, \
                 image_size, source FROM {} WHERE version = $1",
                names.versions()
            ),
            &[&version],
        )
        .map_err(sql)?;
    let (rows, dim, m, ef): (i64, i32, i32, i32) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let build_seconds = build_hnsw(
        client,
        names,
        url,
        version,
        (rows as usize, dim as usize),
        (m, ef),
    )?;
    swap_live(client, names, url, version)?;
    // Searches already running on a retired table finish first (DROP waits for them);
    // new ones read the view, which shows the new version.
    let retired: Vec<i32> = client
        .query(
            &format!(
                "SELECT version FROM {} WHERE state = 'retired' ORDER BY version",
                names.versions()
            ),
            &[],
        )
        .map_err(sql)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for &old in &retired {
        let mut tx = client.transaction().map_err(sql)?;
        schema::drop_data(&mut tx, names, old, &shown).map_err(refused(url))?;
        tx.execute(
            &format!("DELETE FROM {} WHERE version = $1", names.versions()),
            &[&old],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    let source: SourceRecord = serde_json::from_str(&row.get::<_, String>(8))
        .map_err(|e| PgError::Other(format!("version {version}: unreadable source: {e}")))?;
    let record = PgRecord {
        format: record::FORMAT,
        url: url.record(),
        table: names.base.clone(),
        version,
        dim: dim as usize,
        count: rows as usize,
        fingerprint: row.get(4),
        checkpoint: row.get(5),
        backbone: row.get(6),
        image_size: row.get::<_, i32>(7) as u32,
        sources: vec![source],
        m: m as usize,
        ef_construction: ef as usize,
        created: now(),
    };
    record::write(&RunDir::new(run).index_dir(), &record)?;
    Ok(Live {
        build_seconds,
        dropped: retired,
    })
}

#[cfg(test)]
mod tests {
    use super::{Shard, build_memory_mb};

    #[test]
    fn shards_parse_and_cover_the_listing_exactly_once() {
        for bad in ["0/2", "3/2", "2", "a/b", "1/0", "1/20000", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let s: Shard = "2/3".parse().expect("2/3");
        assert_eq!((s.index, s.count, s.to_string()), (2, 3, "2/3".to_string()));
        for len in [0, 1, 2, 7, 100, 101] {
            for count in [1, 2, 3, 8] {
                let mut next = 0;
                for index in 1..=count {
                    let r = Shard { index, count }.range(len);
                    assert_eq!(r.start, next, "len {len}, shard {index}/{count}");
                    assert!(r.len() <= len.div_ceil(count as usize));
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn build_memory_grows_with_the_data_within_bounds() {
        assert_eq!(build_memory_mb(10, 16, 16), 64);
        let mb = build_memory_mb(100_000, 512, 16);
        assert!((250..=400).contains(&mb), "{mb}");
        assert_eq!(build_memory_mb(100_000_000, 512, 16), 4096);
    }
}
