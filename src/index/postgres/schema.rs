//! The database objects of a gallery and the checks that keep vitrine's hands off
//! anyone else's: every object vitrine creates gets a comment starting with
//! [`MARKER`], and an object of one of its names without that comment is refused.

use postgres::{Client, GenericClient};

use super::PgError;

/// First words of the comment on every object vitrine creates.
pub const MARKER: &str = "vitrine gallery";

/// The objects of gallery `base` (a name [`crate::config::check_table_name`] accepts,
/// so it never needs quoting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub base: String,
}

impl Names {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
        }
    }

    /// The view of the live version.
    pub fn view(&self) -> &str {
        &self.base
    }

    pub fn versions(&self) -> String {
        format!("{}_versions", self.base)
    }

    pub fn data(&self, version: i32) -> String {
        format!("{}_v{version}", self.base)
    }
}

/// What a relation of a given name is, if it exists in the current schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    Absent,
    /// Made by vitrine: `relkind` (`r` table, `v` view).
    Ours(char),
    Foreign,
}

/// Looks `name` up in the connection's current schema.
pub fn relation<C: GenericClient>(c: &mut C, name: &str) -> Result<Relation, postgres::Error> {
    let row = c.query_opt(
        "SELECT c.relkind::text, coalesce(obj_description(c.oid, 'pg_class'), '') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relname = $1",
        &[&name],
    )?;
    Ok(match row {
        None => Relation::Absent,
        Some(row) => {
            let kind: String = row.get(0);
            let comment: String = row.get(1);
            if comment.starts_with(MARKER) {
                Relation::Ours(kind.chars().next().unwrap_or('?'))
            } else {
                Relation::Foreign
            }
        }
    })
}

/// `Ok` when `name` is absent or ours of kind `kind`; else the refusal.
pub fn check_ours<C: GenericClient>(
    c: &mut C,
    name: &str,
    kind: char,
    url: &str,
) -> Result<bool, CheckError> {
    match relation(c, name)? {
        Relation::Absent => Ok(false),
        Relation::Ours(k) if k == kind => Ok(true),
        _ => Err(CheckError::Refused(PgError::Foreign {
            url: url.to_string(),
            relation: name.to_string(),
        })),
    }
}

/// A check that failed on the server or found someone else's object.
#[derive(Debug)]
pub enum CheckError {
    Sql(postgres::Error),
    Refused(PgError),
}

impl From<postgres::Error> for CheckError {
    fn from(e: postgres::Error) -> Self {
        Self::Sql(e)
    }
}

/// Creates `T_versions` when absent (serialised by an advisory lock, so that shard
/// jobs starting together do not race); refuses a foreign one, or a foreign view `T`.
pub fn ensure_versions(c: &mut Client, names: &Names, url: &str) -> Result<(), CheckError> {
    let mut tx = c.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('vitrine:' || $1))",
        &[&names.base],
    )?;
    check_ours(&mut tx, names.view(), 'v', url)?;
    if !check_ours(&mut tx, &names.versions(), 'r', url)? {
        let t = names.versions();
        tx.batch_execute(&format!(
            "CREATE TABLE {t} (
                version integer PRIMARY KEY,
                state text NOT NULL CHECK (state IN ('loading', 'live', 'retired')),
                fingerprint text NOT NULL,
                checkpoint text NOT NULL,
                backbone text NOT NULL,
                image_size integer NOT NULL,
                dim integer NOT NULL,
                source text NOT NULL,
                listing text NOT NULL,
                shards integer NOT NULL,
                shards_done integer[] NOT NULL DEFAULT '{{}}',
                rows bigint NOT NULL DEFAULT 0,
                m integer NOT NULL,
                ef_construction integer NOT NULL,
                created timestamptz NOT NULL DEFAULT now(),
                live_since timestamptz
            );
            COMMENT ON TABLE {t} IS '{MARKER} {base}: its versions (written by vitrine; do not edit)';",
            base = names.base
        ))?;
    }
    tx.commit()?;
    Ok(())
}

/// Creates the empty table of `version` (`dim`-d vectors).
pub fn create_data<C: GenericClient>(
    c: &mut C,
    names: &Names,
    version: i32,
    dim: usize,
    url: &str,
) -> Result<(), CheckError> {
    let t = names.data(version);
    // The table and its version row are made in one transaction, so a table of ours
    // without a row is a leftover of a row deleted by hand: replaced. A foreign one
    // is refused.
    if check_ours(c, &t, 'r', url)? {
        c.batch_execute(&format!("DROP TABLE {t}"))?;
    }
    c.batch_execute(&format!(
        "CREATE TABLE {t} (
            id bigint PRIMARY KEY,
            path text NOT NULL,
            item_id text NOT NULL,
            category text NOT NULL,
            shard integer NOT NULL,
            embedding vector({dim}) NOT NULL
        );
        COMMENT ON TABLE {t} IS '{MARKER} {base}: version {version} (written by vitrine; do not edit)';",
        base = names.base
    ))?;
    Ok(())
}

/// Points the view at `version` (in the caller's transaction).
pub fn point_view<C: GenericClient>(
    c: &mut C,
    names: &Names,
    version: i32,
    url: &str,
) -> Result<(), CheckError> {
    let view = names.view();
    if check_ours(c, view, 'v', url)? {
        c.batch_execute(&format!("DROP VIEW {view}"))?;
    }
    c.batch_execute(&format!(
        "CREATE VIEW {view} AS SELECT {version} AS version, id, path, item_id, category, embedding FROM {data};
        COMMENT ON VIEW {view} IS '{MARKER} {view}: the live version (written by vitrine; do not edit)';",
        data = names.data(version)
    ))?;
    Ok(())
}

/// Drops the table of `version` when it is ours (never a foreign one).
pub fn drop_data<C: GenericClient>(
    c: &mut C,
    names: &Names,
    version: i32,
    url: &str,
) -> Result<(), CheckError> {
    let t = names.data(version);
    if check_ours(c, &t, 'r', url)? {
        c.batch_execute(&format!("DROP TABLE {t}"))?;
    }
    Ok(())
}
