//! vitrine: consumer-to-shop image retrieval with deep metric learning.
//!
//! The binary is a thin shell over these modules so that `tests/` reach everything.
//! The CPU math (and every `unsafe` block of the project) lives in the
//! `vitrine-kernels` crate; this one has none.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod eval;
pub mod fsutil;
pub mod index;
pub mod logging;
pub mod model;
pub mod output;
pub mod pid;
pub mod printable;
pub mod progress;
pub mod rng;
pub mod run;
pub mod theme;
pub mod train;
pub mod tui;
pub mod weights;
