//! vitrine: consumer-to-shop image retrieval with deep metric learning.
//!
//! The binary is a thin shell over these modules so that `tests/` reach everything.

pub mod cli;
pub mod config;
pub mod data;
pub mod fsutil;
pub mod logging;
pub mod model;
pub mod rng;
// pub mod commands; (enabled once data::synth lands)
pub mod progress;
