//! `vitrine bench search --backend postgres`: the same vectors through PostgreSQL —
//! binary COPY into a gallery table, pgvector's HNSW build, then every query through
//! [`PgGallery::search`] (the production path: `SET LOCAL hnsw.ef_search`, shortlist,
//! exact re-rank) at each beam width, timed one by one on one connection. The tables
//! are vitrine's own and dropped at the end.

use std::time::Instant;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use serde::Serialize;

use super::connect::{connect, error};
use super::gallery::{MAX_EF_SEARCH, PgGallery};
use super::load::{
    PgTarget, VersionMeta, build_hnsw, open_version, refused, swap_live, vector_type,
};
use super::record::{FORMAT, PgRecord};
use super::schema::{self, Names};
use super::{PgError, PgUrl};
use crate::index::benchmark::{SearchRun, qps_median_chunk, quantile};
use crate::index::npy::Matrix;
use crate::index::rerank::{SearchParams, recall_at_k};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PgBenchReport {
    /// URL without password.
    pub url: String,
    pub table: String,
    pub server: String,
    /// Binary COPY of the base vectors.
    pub load_s: f64,
    /// `CREATE INDEX … USING hnsw` (m, ef_construction as in-process).
    pub build_s: f64,
    pub m: usize,
    pub ef_construction: usize,
    pub runs: Vec<SearchRun>,
}

/// Loads `base` (unit rows) into `target`, builds the index and searches `queries`
/// at each of `efs` (capped at pgvector's 1000), scoring against `truth` (the exact
/// top k of each query).
#[allow(clippy::too_many_arguments)]
pub fn run(
    target: &PgTarget,
    base: &Matrix,
    queries: &Matrix,
    truth: &[Vec<usize>],
    k: usize,
    efs: &[usize],
    (m, ef_construction): (usize, usize),
    progress: &mut dyn FnMut(&str),
) -> Result<PgBenchReport, PgError> {
    let url = &target.url;
    let names = Names::new(&target.table);
    let mut client = connect(url)?;
    let server: String = client
        .query_one(
            "SELECT current_setting('server_version') || ', pgvector ' || extversion \
             FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .map_err(|e| error(url, &e))?
        .get(0);
    schema::ensure_versions(&mut client, &names, &url.shown()).map_err(refused(url))?;
    let (m, ef_construction) = (
        m.clamp(2, 100) as i32,
        ef_construction.clamp(2 * m.clamp(2, 100), 1000) as i32,
    );
    let meta = VersionMeta {
        fingerprint: "bench".into(),
        checkpoint: String::new(),
        backbone: String::new(),
        image_size: 0,
        dim: base.cols as i32,
        source: "{}".into(),
        listing: String::new(),
        shards: 1,
        m,
        ef_construction,
    };
    let shard = super::Shard { index: 1, count: 1 };
    let version = open_version(&mut client, &names, url, &meta, shard, true)?;
    let result = (|| {
        let load_s = copy(&mut client, &names, url, version, base)?;
        progress(&format!(
            "postgres: loaded {} × {} in {load_s:.2} s (binary COPY)",
            base.rows, base.cols
        ));
        let build_s = build_hnsw(
            &mut client,
            &names,
            url,
            version,
            (base.rows, base.cols),
            (m, ef_construction),
        )?;
        progress(&format!(
            "postgres: HNSW index (m {m}, ef_construction {ef_construction}) built in {build_s:.2} s"
        ));
        swap_live(&mut client, &names, url, version)?;
        let gallery = PgGallery::open(url.clone(), &record(&names, version, base))?;
        let accept = |_: &super::gallery::LiveVersion| Ok(());
        let mut runs = Vec::new();
        for &ef in efs {
            let ef = ef.max(k).min(MAX_EF_SEARCH);
            if runs.iter().any(|r: &SearchRun| r.ef == ef) {
                continue;
            }
            let params = SearchParams {
                shortlist: ef,
                ef,
                int8: false,
            };
            for q in queries.iter_rows().take(20) {
                gallery.search(q, k, params, &accept)?;
            }
            let mut ms = Vec::with_capacity(queries.rows);
            let mut found = Vec::with_capacity(queries.rows);
            let started = Instant::now();
            for q in queries.iter_rows() {
                let t = Instant::now();
                let hits = gallery.search(q, k, params, &accept)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                found.push(hits.iter().map(|h| h.id).collect::<Vec<_>>());
            }
            let secs = started.elapsed().as_secs_f64();
            let qps_median10 = qps_median_chunk(&ms);
            let run = SearchRun {
                engine: "postgres".into(),
                ef,
                shortlist: ef,
                recall_at_k: recall_at_k(&found, truth, k),
                qps: queries.rows as f64 / secs.max(1e-9),
                qps_median10,
                p50_ms: quantile(&mut ms, 0.5),
                p99_ms: quantile(&mut ms, 0.99),
            };
            progress(&format!(
                "postgres ef {ef}: recall@{k} {:.4}, {:.0} queries/s, p50 {:.2} ms, p99 {:.2} ms",
                run.recall_at_k, run.qps, run.p50_ms, run.p99_ms
            ));
            runs.push(run);
        }
        Ok(PgBenchReport {
            url: url.shown(),
            table: names.base.clone(),
            server: server.clone(),
            load_s,
            build_s,
            m: m as usize,
            ef_construction: ef_construction as usize,
            runs,
        })
    })();
    // The benchmark's tables go, whatever happened (only ever vitrine's own).
    let cleaned = drop_all(&mut client, &names, url);
    let report = result?;
    cleaned?;
    Ok(report)
}

/// A record naming the benchmark's gallery (what [`PgGallery::open`] reads of it).
fn record(names: &Names, version: i32, base: &Matrix) -> PgRecord {
    PgRecord {
        format: FORMAT,
        url: String::new(),
        table: names.base.clone(),
        version,
        dim: base.cols,
        count: base.rows,
        fingerprint: "bench".into(),
        checkpoint: String::new(),
        backbone: String::new(),
        image_size: 0,
        sources: Vec::new(),
        m: 0,
        ef_construction: 0,
        created: 0.0,
    }
}

/// Binary COPY of `base`'s rows (ids = row numbers) into `version`; seconds.
fn copy(
    client: &mut postgres::Client,
    names: &Names,
    url: &PgUrl,
    version: i32,
    base: &Matrix,
) -> Result<f64, PgError> {
    let sql = |e: postgres::Error| error(url, &e);
    let vector = vector_type(client, url)?;
    let started = Instant::now();
    let mut tx = client.transaction().map_err(sql)?;
    let sink = tx
        .copy_in(&format!(
            "COPY {} (id, path, item_id, category, shard, embedding) FROM STDIN BINARY",
            names.data(version)
        ))
        .map_err(sql)?;
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        vector,
    ];
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    let empty = String::new();
    for (i, row) in base.iter_rows().enumerate() {
        let v = pgvector::Vector::from(row.to_vec());
        writer
            .write(&[&(i as i64), &empty, &empty, &empty, &1i32, &v])
            .map_err(sql)?;
    }
    writer.finish().map_err(sql)?;
    tx.execute(
        &format!(
            "UPDATE {} SET rows = $2, shards_done = '{{1}}' WHERE version = $1",
            names.versions()
        ),
        &[&version, &(base.rows as i64)],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Drops the view, every version table and the versions table of `names` (each
/// checked to be vitrine's first).
fn drop_all(client: &mut postgres::Client, names: &Names, url: &PgUrl) -> Result<(), PgError> {
    let shown = url.shown();
    let sql = |e: postgres::Error| error(url, &e);
    if schema::check_ours(client, names.view(), 'v', &shown).map_err(refused(url))? {
        client
            .batch_execute(&format!("DROP VIEW {}", names.view()))
            .map_err(sql)?;
    }
    if !schema::check_ours(client, &names.versions(), 'r', &shown).map_err(refused(url))? {
        return Ok(());
    }
    let versions: Vec<i32> = client
        .query(&format!("SELECT version FROM {}", names.versions()), &[])
        .map_err(sql)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for v in versions {
        schema::drop_data(client, names, v, &shown).map_err(refused(url))?;
    }
    client
        .batch_execute(&format!("DROP TABLE {}", names.versions()))
        .map_err(sql)
}
