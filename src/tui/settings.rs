//! The dashboard's `[ui]` choices that are more than a number (defined with the
//! configuration, which parses them).

pub use crate::config::{ImageMode, PlotMarker};
