//! The gallery index: embedding images with a trained embedder, the HNSW graph
//! (hnsw_rs) and its exact re-rank, the `RUN/index/` folder, the [`search::Searcher`]
//! the CLI and the dashboard query, and DeepFashion evaluation of a run. A gallery can
//! also live in PostgreSQL with pgvector ([`postgres`]); [`backend`] picks where.

pub mod backend;
pub mod bandwidth;
pub mod benchmark;
pub mod build;
pub mod clustered;
pub mod evaluate;
pub mod exact;
pub mod hnsw;
pub mod hnsw_dump;
pub mod hnsw_insert;
pub mod model;
pub mod npy;
pub mod postgres;
pub mod rerank;
pub mod search;
pub mod store;
pub mod tune;
pub mod walk;

pub use build::{BuildError, Gallery, IndexJob, IndexReport};
pub use model::{CheckpointChoice, ModelError};
pub use rerank::{SearchParams, VectorIndex};
pub use search::{SearchError, SearchHit, Searcher, StaleIndex};
pub use store::{Entry, Index, IndexError, IndexHeader};
