//! The dashboard (ratatui): Train, Dataset, Triplets, Search and Runs tabs over a run
//! folder. State lives in [`app::App`] and changes only through
//! [`app::App::update`]`(`[`app::Action`]`)`, each tab's part of it in [`tabs`];
//! [`keymap`] turns keys into actions;
//! [`views`] draw from `&App` and the [`crate::theme::Theme`]; [`workers`] do
//! everything slow in background threads and report typed events; [`runtime`] owns
//! the terminal and redraws when something changed, at a capped frame rate, and its
//! `executor` carries out the commands `update` returns.
//!
//! Training runs as its own process writing the run folder, so it survives the
//! dashboard; the dashboard follows `RUN/metrics.jsonl` like any other reader.

pub mod app;
mod executor;
pub mod graphics;
pub mod keymap;
pub mod runtime;
pub mod tabs;
pub mod thumb_cache;
pub mod views;
pub mod workers;

pub use app::{Action, App, AppOptions, Command};
pub use runtime::{Launch, run};
