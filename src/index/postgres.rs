//! The gallery in PostgreSQL with pgvector: the same rows as `RUN/index/` (id, image
//! path, item id, category, embedding) in a versioned table, searched through
//! pgvector's HNSW index and re-ranked by exact cosine here, as the in-process index
//! does. `RUN/index/postgres.json` ([`record`]) says which database and table hold a
//! run's gallery, so `search`, `eval` and the dashboard need no new flags.
//!
//! In the database, for `[index] table = T` (see [`schema`]):
//!
//! ```text
//! T_versions   one row per version: state (loading | live | retired), weights
//!              fingerprint, dim, shards expected and done, rows, created
//! T_v<N>       the rows of version N (binary COPY), with its HNSW index once final
//! T            a view of the live version; swapped in one transaction
//! ```
//!
//! Every object carries a comment starting with [`schema::MARKER`]; an object of one
//! of these names without it is someone else's and is never used or dropped.

pub mod bench;
pub mod connect;
pub mod gallery;
pub mod load;
pub mod record;
pub mod schema;
pub mod url;

pub use connect::connect;
pub use gallery::PgGallery;
pub use load::{PgTarget, Shard};
pub use record::PgRecord;
pub use url::PgUrl;

/// Everything that can go wrong with the PostgreSQL backend; each message names the
/// server by its URL without the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "{setting}: the environment variable {var} is not set (it should hold the PostgreSQL URL, postgres://user:password@host:port/database)"
    )]
    EnvUnset { setting: String, var: String },
    #[error("{setting}: {message}")]
    BadUrl { setting: String, message: String },
    #[error("cannot reach PostgreSQL at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("PostgreSQL at {url} refused the login: {message} (check the user and password)")]
    Auth { url: String, message: String },
    #[error(
        "PostgreSQL at {url} asks for TLS, which vitrine does not speak: connect through a TLS proxy on this machine or a private network (README: \"Past one machine\"); {message}"
    )]
    Tls { url: String, message: String },
    #[error("the connection to PostgreSQL at {url} was lost: {message}")]
    Lost { url: String, message: String },
    #[error("PostgreSQL at {url}: {message}")]
    Server { url: String, message: String },
    #[error(
        "the database at {url} has no vector extension: run `CREATE EXTENSION vector;` in it (as its owner or a superuser){hint}"
    )]
    MissingExtension { url: String, hint: String },
    #[error(
        "the database at {url} has pgvector {version}; vitrine needs 0.5.0 or newer (HNSW): `ALTER EXTENSION vector UPDATE;`"
    )]
    OldExtension { url: String, version: String },
    #[error(
        "{relation} in {url} was not made by vitrine (it has no vitrine comment): refusing to use or drop it; pick another name with --table or [index] table"
    )]
    Foreign { url: String, relation: String },
    #[error(
        "{table} in {url} has no live gallery: index one with `vitrine index --backend postgres`"
    )]
    NoLive { url: String, table: String },
    #[error(
        "version {version} of {table} in {url} holds {index}-d vectors but this model embeds {model}-d"
    )]
    Dimension {
        url: String,
        table: String,
        version: i32,
        index: usize,
        model: usize,
    },
    #[error(
        "version {version} of {table} in {url} was made by other weights or embedding settings (fingerprint {index}) than this model's ({model}): re-index it with `vitrine index --backend postgres`"
    )]
    Stale {
        url: String,
        table: String,
        version: i32,
        index: String,
        model: String,
    },
    #[error(
        "version {version} of {table} in {url} is being loaded {what}: finish it (--shard I/{shards} for each missing shard, then --finalize) or index with another --table"
    )]
    Mismatch {
        url: String,
        table: String,
        version: i32,
        shards: u32,
        what: String,
    },
    #[error(
        "shard {shard}/{shards} is already in version {version} of {table} in {url}: run the missing shards, or --finalize"
    )]
    ShardDone {
        url: String,
        table: String,
        version: i32,
        shard: u32,
        shards: u32,
    },
    #[error("{table} in {url} has no version being loaded: run `vitrine index --shard I/N` first")]
    NothingToFinalize { url: String, table: String },
    #[error(
        "version {version} of {table} in {url} lacks {missing} (of {shards}): run `vitrine index --shard I/{shards}` for each before --finalize"
    )]
    MissingShards {
        url: String,
        table: String,
        version: i32,
        shards: u32,
        missing: String,
    },
    #[error("{0}")]
    Other(String),
}
