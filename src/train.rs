//! Training: the worker that turns a dataset into checkpoints, the typed events it
//! emits, the append-only metrics log any process can follow, and the optimiser.

pub mod average;
pub mod budget;
pub mod checkpoint_policy;
pub mod collapse;
pub mod error;
pub mod events;
pub mod job;
pub mod metrics_log;
pub mod optim;
mod rate;
pub mod resume;
pub mod runs;
mod session;
pub mod step;
pub mod trainer;
mod training_data;
pub mod validation;
