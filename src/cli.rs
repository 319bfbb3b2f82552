//! Command line (clap derive). Every job runs headless from here; the dashboard is
//! one more subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::data::deepfashion::GalleryProtocol;

#[derive(Debug, Parser)]
#[command(
    name = "vitrine",
    version,
    about = "Consumer-to-shop image retrieval with deep metric learning, in the terminal",
    long_about = None
)]
pub struct Cli {
    /// Settings file overriding the built-in defaults (see config.toml for every key).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Append logs to this file.
    #[arg(long, global = true, value_name = "PATH")]
    pub log: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the built-in synthetic dataset if absent, then run the main job on it.
    Demo(DemoArgs),
    /// Write a synthetic consumer-to-shop dataset in the DeepFashion layout.
    Synth(SynthArgs),
    /// Per-split counts of a dataset (pairs, items, images, query/gallery sizes).
    Splits(SplitsArgs),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the synthetic dataset lives (made if absent) [default: data.root].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder [default: data.root].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Number of items (products) [default: synth.items].
    #[arg(long)]
    pub items: Option<usize>,
    /// Image side in pixels [default: synth.size].
    #[arg(long)]
    pub size: Option<u32>,
    /// Random seed; the same seed writes byte-identical files [default: synth.seed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DataArgs {
    /// Dataset root in the DeepFashion Consumer-to-shop layout [default: data.root].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Missing image files are an error instead of skipped [default: data.strict].
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct SplitsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Gallery protocol for the query/gallery sizes: test | val+test [default: data.gallery].
    #[arg(long)]
    pub gallery: Option<GalleryProtocol>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Loader throughput: decode + crop + resize + normalise, images/s.
    Load(BenchLoadArgs),
}

#[derive(Debug, Args)]
pub struct BenchLoadArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Output side in pixels [default: model.image_size].
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Batches to time (after one warm-up batch).
    #[arg(long, default_value_t = 20)]
    pub batches: usize,
    /// Print JSON (`images_per_s`).
    #[arg(long)]
    pub json: bool,
}
