//! Training: the worker that turns a dataset into checkpoints, the typed events it
//! emits, the append-only metrics log any process can follow, the run folder and
//! the optimiser.

pub mod checkpoint_set;
pub mod collapse;
pub mod device;
pub mod events;
pub mod metrics_log;
pub mod optim;
pub mod run_dir;
pub mod trainer;
