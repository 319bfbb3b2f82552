//! The run folder and everything about it that several layers read: its paths and
//! lock and control file ([`folder`]), its checkpoints as units and their metadata
//! ([`checkpoints`]), its resolved settings ([`settings`]), and the device it runs on
//! ([`device`]). Training writes runs; indexing, the dashboard and the commands read
//! them; this module depends on none of those.

pub mod checkpoints;
pub mod device;
pub mod folder;
pub mod settings;

pub use folder::{CheckpointKind, RunDir};
