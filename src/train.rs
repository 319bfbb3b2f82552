//! Training: the worker that turns a dataset into checkpoints, the typed events it
//! emits, the append-only metrics log any process can follow, and the optimiser.

pub mod checkpoint_policy;
pub mod collapse;
pub mod events;
pub mod metrics_log;
pub mod optim;
pub mod runs;
pub mod step;
pub mod trainer;
