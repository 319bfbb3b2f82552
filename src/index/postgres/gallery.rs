//! Searching a gallery in PostgreSQL: pgvector's HNSW index gives the shortlist
//! (`SET LOCAL hnsw.ef_search`, the query bound as a parameter so the planner can use
//! the index), and the shortlist is re-ranked here by exact cosine on the stored
//! float vectors, with the same arithmetic as the in-process index. `exact` scans
//! every row in SQL.
//!
//! The connection is opened again after it was lost (the search that saw it go
//! fails with a message naming the server; the next one reconnects).

use std::sync::{Arc, Mutex};

use postgres::{Client, Statement};

use super::connect::{connect, error};
use super::schema::{self, CheckError, Names};
use super::{PgError, PgRecord, PgUrl};
use crate::index::npy::Matrix;
use crate::index::rerank::SearchParams;
use crate::index::search::SearchHit;
use crate::index::store::Entry;

/// pgvector caps `hnsw.ef_search` (and so the rows one index scan returns) at 1000.
pub const MAX_EF_SEARCH: usize = 1000;

/// The live version a searcher serves.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveVersion {
    pub version: i32,
    pub fingerprint: String,
    pub checkpoint: String,
    pub dim: usize,
    pub rows: usize,
}

struct Conn {
    client: Client,
    /// The nearest rows of `$1`, at most `$2`: through the HNSW index, or a full
    /// scan with index scans off.
    nearest: Statement,
}

/// Every row of the live version, in id order.
#[derive(Debug)]
pub struct GalleryRows {
    pub version: i32,
    pub entries: Vec<Entry>,
    pub vectors: Matrix,
}

/// A connection to one gallery's live version.
pub struct PgGallery {
    url: PgUrl,
    names: Names,
    live: Mutex<LiveVersion>,
    conn: Mutex<Option<Conn>>,
    rows: Mutex<Option<Arc<GalleryRows>>>,
}

impl std::fmt::Debug for PgGallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgGallery")
            .field("url", &self.url)
            .field("table", &self.names.base)
            .finish_non_exhaustive()
    }
}

/// Cosine of `q` (with `1/‖q‖ = q_inv`) and `v`, as [`crate::index::rerank`] computes it.
fn cosine(q: &[f32], q_inv: f32, v: &[f32]) -> f32 {
    let n = vitrine_kernels::dot::dot(v, v).sqrt();
    let v_inv = if n > 0.0 { 1.0 / n } else { 0.0 };
    vitrine_kernels::dot::dot(q, v) * q_inv * v_inv
}

fn inv_norm(q: &[f32]) -> f32 {
    let n = vitrine_kernels::dot::dot(q, q).sqrt();
    if n > 0.0 { 1.0 / n } else { 0.0 }
}

impl PgGallery {
    /// Connects to the gallery `record` names (the URL resolved by the caller) and
    /// reads its live version.
    pub fn open(url: PgUrl, record: &PgRecord) -> Result<Self, PgError> {
        let names = Names::new(&record.table);
        let mut client = connect(&url)?;
        let live = read_live(&mut client, &names, &url)?;
        let conn = prepare(client, &names, &url)?;
        Ok(Self {
            url,
            names,
            live: Mutex::new(live),
            conn: Mutex::new(Some(conn)),
            rows: Mutex::new(None),
        })
    }

    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    pub fn table(&self) -> &str {
        &self.names.base
    }

    /// The live version as last seen.
    pub fn live(&self) -> LiveVersion {
        self.live
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |l| l.clone())
    }

    /// Runs `f` on the connection, connecting first when there is none; a lost
    /// connection is dropped so that the next call reconnects.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, PgError> {
        let mut guard = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = None;
            let client = connect(&self.url)?;
            *guard = Some(prepare(client, &self.names, &self.url)?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(PgError::Other("no connection".into()));
        };
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = error(&self.url, &e);
                if matches!(err, PgError::Lost { .. }) || conn.client.is_closed() {
                    *guard = None;
                }
                Err(err)
            }
        }
    }

    /// The `k` nearest rows of `q`: the HNSW shortlist (`params`, `ef_search` at most
    /// [`MAX_EF_SEARCH`]) re-ranked by exact cosine. `accept` is asked about a new
    /// live version (a re-index since the last search) and may refuse it.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        params: SearchParams,
        accept: &dyn Fn(&LiveVersion) -> Result<(), PgError>,
    ) -> Result<Vec<SearchHit>, PgError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let (shortlist, ef) = params.resolve(k);
        let ef = ef.min(MAX_EF_SEARCH);
        let shortlist = shortlist.min(ef) as i64;
        let v = pgvector::Vector::from(q.to_vec());
        let rows = self.with_conn(|c| {
            let mut tx = c.client.transaction()?;
            tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}"))?;
            let rows = tx.query(&c.nearest, &[&v, &shortlist])?;
            tx.commit()?;
            Ok(rows)
        })?;
        self.rank(q, k, &rows, accept)
    }

    /// The exact `k` nearest rows of `q`: a full scan in SQL (no index), the top
    /// re-scored as [`Self::search`] does.
    pub fn exact(
        &self,
        q: &[f32],
        k: usize,
        accept: &dyn Fn(&LiveVersion) -> Result<(), PgError>,
    ) -> Result<Vec<SearchHit>, PgError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        // A few more than k: near-ties may order differently in pgvector's arithmetic.
        let limit = (k + k / 2 + 8) as i64;
        let v = pgvector::Vector::from(q.to_vec());
        let rows = self.with_conn(|c| {
            let mut tx = c.client.transaction()?;
            tx.batch_execute("SET LOCAL enable_indexscan = off")?;
            let rows = tx.query(&c.nearest, &[&v, &limit])?;
            tx.commit()?;
            Ok(rows)
        })?;
        self.rank(q, k, &rows, accept)
    }

    /// Re-ranks `rows` (version, id, path, item_id, category, embedding) by exact cosine.
    fn rank(
        &self,
        q: &[f32],
        k: usize,
        rows: &[postgres::Row],
        accept: &dyn Fn(&LiveVersion) -> Result<(), PgError>,
    ) -> Result<Vec<SearchHit>, PgError> {
        if let Some(first) = rows.first() {
            self.check_version(first.get(0), accept)?;
        }
        let q_inv = inv_norm(q);
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            let v: pgvector::Vector = row.try_get(5).map_err(|e| error(&self.url, &e))?;
            let id: i64 = row.get(1);
            hits.push(SearchHit {
                rank: 0,
                id: id as usize,
                path: row.get(2),
                score: cosine(q, q_inv, v.as_slice()),
                item_id: row.get(3),
                category: row.get(4),
            });
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits.truncate(k);
        for (r, h) in hits.iter_mut().enumerate() {
            h.rank = r + 1;
        }
        Ok(hits)
    }

    /// A row of another version than the one served: the gallery was re-indexed.
    /// Its description is read and handed to `accept` (same weights: fine).
    fn check_version(
        &self,
        version: i32,
        accept: &dyn Fn(&LiveVersion) -> Result<(), PgError>,
    ) -> Result<(), PgError> {
        if self.live().version == version {
            return Ok(());
        }
        let names = self.names.clone();
        let url = self.url.clone();
        let live = self.with_conn(|c| read_live_row(&mut c.client, &names))?;
        let live = live.ok_or_else(|| PgError::NoLive {
            url: url.shown(),
            table: names.base.clone(),
        })?;
        accept(&live)?;
        tracing::info!(
            "{} in {} is now version {} ({} rows)",
            names.base,
            url.shown(),
            live.version,
            live.rows
        );
        if let Ok(mut l) = self.live.lock() {
            *l = live;
        }
        Ok(())
    }

    /// Every row of the live version, read once and kept (for the failures view and
    /// evaluation); read again after a re-index.
    pub fn rows(
        &self,
        accept: &dyn Fn(&LiveVersion) -> Result<(), PgError>,
    ) -> Result<Arc<GalleryRows>, PgError> {
        let mut cached = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let view = self.names.view().to_string();
        let rows = self.with_conn(|c| {
            c.client.query(
                &format!(
                    "SELECT version, id, path, item_id, category, embedding FROM {view} ORDER BY id"
                ),
                &[],
            )
        })?;
        let version = rows.first().map_or(self.live().version, |r| r.get(0));
        self.check_version(version, accept)?;
        if let Some(c) = cached.as_ref().filter(|c| c.version == version) {
            return Ok(Arc::clone(c));
        }
        let dim = self.live().dim;
        let mut entries = Vec::with_capacity(rows.len());
        let mut data = Vec::with_capacity(rows.len() * dim);
        for row in &rows {
            let v: pgvector::Vector = row.try_get(5).map_err(|e| error(&self.url, &e))?;
            if v.as_slice().len() != dim {
                return Err(PgError::Other(format!(
                    "{view} in {}: row {} holds {} values, the version {dim}",
                    self.url.shown(),
                    row.get::<_, i64>(1),
                    v.as_slice().len()
                )));
            }
            data.extend_from_slice(v.as_slice());
            entries.push(Entry {
                id: row.get::<_, i64>(1) as usize,
                path: row.get(2),
                item_id: row.get(3),
                category: row.get(4),
            });
        }
        let vectors = Matrix::new(entries.len(), dim, data)
            .ok_or_else(|| PgError::Other("rows and vectors disagree".into()))?;
        let all = Arc::new(GalleryRows {
            version,
            entries,
            vectors,
        });
        *cached = Some(Arc::clone(&all));
        Ok(all)
    }
}

fn prepare(mut client: Client, names: &Names, url: &PgUrl) -> Result<Conn, PgError> {
    let view = names.view();
    let sql = |e: postgres::Error| error(url, &e);
    // The query vector is a parameter: bound from a join or sub-query, the planner
    // would not use the HNSW index.
    let nearest = client
        .prepare(&format!(
            "SELECT version, id, path, item_id, category, embedding FROM {view} \
             ORDER BY embedding <=> $1 LIMIT $2"
        ))
        .map_err(sql)?;
    Ok(Conn { client, nearest })
}

/// The live version's row, checking that the view and the versions table are ours.
fn read_live(client: &mut Client, names: &Names, url: &PgUrl) -> Result<LiveVersion, PgError> {
    let shown = url.shown();
    for (name, kind) in [(names.view().to_string(), 'v'), (names.versions(), 'r')] {
        let found = schema::check_ours(client, &name, kind, &shown).map_err(|e| match e {
            CheckError::Sql(e) => error(url, &e),
            CheckError::Refused(e) => e,
        })?;
        if !found {
            return Err(PgError::NoLive {
                url: shown,
                table: names.base.clone(),
            });
        }
    }
    read_live_row(client, names)
        .map_err(|e| error(url, &e))?
        .ok_or(PgError::NoLive {
            url: shown,
            table: names.base.clone(),
        })
}

fn read_live_row(
    client: &mut Client,
    names: &Names,
) -> Result<Option<LiveVersion>, postgres::Error> {
    let row = client.query_opt(
        &format!(
            "SELECT version, fingerprint, checkpoint, dim, rows FROM {} WHERE state = 'live'",
            names.versions()
        ),
        &[],
    )?;
    Ok(row.map(|r| LiveVersion {
        version: r.get(0),
        fingerprint: r.get(1),
        checkpoint: r.get(2),
        dim: r.get::<_, i32>(3) as usize,
        rows: r.get::<_, i64>(4) as usize,
    }))
}
