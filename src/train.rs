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

// Former homes of the run folder's parts, now in `crate::run` (until every caller
// imports them from there).
pub use crate::run::checkpoints as checkpoint_set;
pub use crate::run::device;
pub use crate::run::folder as run_dir;
