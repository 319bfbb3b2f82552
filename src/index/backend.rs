//! Which backend holds a run's gallery, as `RUN/index/` records it (the local index's
//! `header.json`, or `postgres.json`), and building into the configured one: the
//! single place where the CLI, the dashboard and the searcher choose.

use std::path::Path;

use super::build::{self, BuildError, IndexJob};
use super::postgres::{PgError, PgRecord, PgTarget, PgUrl, load, record};
use super::store::{self, IndexError, IndexHeader};
use crate::config::{IndexBackend, IndexConfig};

/// What `RUN/index/` holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Local(Box<IndexHeader>),
    Postgres(Box<PgRecord>),
}

impl Recorded {
    /// Gallery images.
    pub fn count(&self) -> usize {
        match self {
            Self::Local(h) => h.count,
            Self::Postgres(r) => r.count,
        }
    }

    /// The checkpoint file the gallery was embedded with (empty: untrained).
    pub fn checkpoint(&self) -> &str {
        match self {
            Self::Local(h) => &h.checkpoint,
            Self::Postgres(r) => &r.checkpoint,
        }
    }

    pub fn fingerprint(&self) -> &str {
        match self {
            Self::Local(h) => &h.fingerprint,
            Self::Postgres(r) => &r.fingerprint,
        }
    }
}

/// Reads what `dir` (a run's `RUN/index/`) records.
pub fn read(dir: &Path) -> Result<Recorded, IndexError> {
    if let Some(r) = record::read(dir)? {
        return Ok(Recorded::Postgres(Box::new(r)));
    }
    store::read_header(dir).map(|h| Recorded::Local(Box::new(h)))
}

/// The PostgreSQL target of `settings` (`index.pg_url`, `index.table`), each
/// overridden by a flag when given; `what` names the URL's origin in errors.
pub fn pg_target(
    settings: &IndexConfig,
    url: Option<&str>,
    table: Option<&str>,
) -> Result<PgTarget, PgError> {
    let (setting, what) = match url {
        Some(u) => (u, "--pg-url"),
        None => (settings.pg_url.as_str(), "index.pg_url"),
    };
    let table = table.unwrap_or(&settings.table);
    crate::config::check_table_name(table).map_err(|m| PgError::BadUrl {
        setting: if table == settings.table {
            "index.table".into()
        } else {
            "--table".into()
        },
        message: m,
    })?;
    Ok(PgTarget {
        url: PgUrl::resolve(setting, what)?,
        table: table.to_string(),
    })
}

/// Builds the job's whole gallery into the backend `settings` name (the dashboard's
/// `i`); returns the number of images indexed.
pub fn build_configured(
    job: &IndexJob,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<usize, BuildError> {
    match job.settings.backend {
        IndexBackend::Local => Ok(build::build(job, progress)?.count),
        IndexBackend::Postgres => {
            let target = pg_target(&job.settings, None, None)?;
            Ok(load::index(job, &target, None, progress)?.count)
        }
    }
}
