//! Command line (clap derive). Every job runs headless from here; the dashboard is
//! one more subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    IMAGE_SIZE, MAX_BATCH, MAX_EF, MAX_EMBEDDING_DIM, MAX_EPOCHS, MAX_K, MAX_STEPS,
};
use crate::data::deepfashion::GalleryProtocol;
use crate::data::synth::{MAX_ITEMS, MAX_SIZE, MIN_ITEMS, MIN_SIZE};
use crate::model::{Backbone, LossKind, Mining};

// Every size flag has a range: a huge value is clap's usage error (exit 2) naming the
// flag, not an overflow or an allocation abort deep inside a job.

/// `usize` in `lo..=hi`.
fn sizes(lo: usize, hi: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(lo as u64..=hi as u64)
}

/// Image sides in pixels.
fn pixels(lo: u32, hi: u32) -> clap::builder::RangedI64ValueParser<u32> {
    clap::builder::RangedI64ValueParser::new().range(i64::from(lo)..=i64::from(hi))
}

/// Most vectors `bench vectors` writes (with at most MAX_EMBEDDING_DIM each, the
/// product is checked again there).
const MAX_VECTORS: usize = 100_000_000;

/// What `vitrine --help` says about exit codes (README: "Commands" says the same).
pub const EXIT_STATUS: &str = "Exit status: 0 on success (a run stopped by Ctrl-C included), \
1 when a command fails (the message names the file, line or config key at fault), \
2 for a usage error (unknown flag or command, a missing or out-of-range value).";

#[derive(Debug, Parser)]
#[command(
    name = "vitrine",
    version,
    about = "Consumer-to-shop image retrieval with deep metric learning, in the terminal",
    long_about = None,
    after_help = EXIT_STATUS
)]
pub struct Cli {
    /// Settings file overriding the built-in defaults (see config.toml for every key);
    /// `train --resume` uses the run's own RUN/config.toml instead.
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
    /// Make the built-in synthetic dataset if absent, open the dashboard and train on it
    /// (headless when stdout is not a terminal); the default command.
    Demo(DemoArgs),
    /// Open the dashboard on a dataset and run (Train, Dataset, Triplets, Search, Runs tabs).
    Dashboard(DashboardArgs),
    /// Follow a run another process is training: replay its metrics, then live (read-only).
    Watch(WatchArgs),
    /// Write a synthetic consumer-to-shop dataset in the DeepFashion layout.
    Synth(SynthArgs),
    /// Per-split counts of a dataset (pairs, items, images, query/gallery sizes).
    Splits(SplitsArgs),
    /// Train the embedder (headless; progress on stderr, events in RUN/metrics.jsonl).
    Train(TrainArgs),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Embed a gallery with a run's checkpoint into RUN/index/ (HNSW + vectors) or
    /// into PostgreSQL with pgvector (--backend postgres; sharded with --shard/--finalize).
    Index(IndexArgs),
    /// Nearest gallery images of a query image (HNSW shortlist + exact re-rank).
    Search(SearchArgs),
    /// DeepFashion top-k accuracy and MAP@R of a run (test consumer queries vs shop gallery).
    Eval(EvalArgs),
    /// The runs in a folder: status, recipe, steps, best val top-1/top-20, duration.
    Runs(RunsArgs),
    /// Pretrained weights from the Hugging Face Hub: pull into its cache, list it.
    #[command(subcommand)]
    Weights(WeightsCommand),
}

#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Download a Hub repo's model.safetensors into the Hugging Face cache (HF_HOME),
    /// sha256-verified, and print its path; `model.pretrained = "hf:REPO"` then
    /// trains from it without the network. Honours HF_ENDPOINT, HF_HOME,
    /// HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE.
    Pull(WeightsPullArgs),
    /// The weights in the Hugging Face cache (what `hf:REPO` can name offline).
    List(WeightsListArgs),
}

#[derive(Debug, Args)]
pub struct WeightsPullArgs {
    /// OWNER/NAME[@REVISION], e.g. timm/resnet50.a1_in1k or timm/resnet18.a1_in1k@main.
    #[arg(value_name = "REPO[@REV]", value_parser = crate::weights::HubRef::parse)]
    pub repo: crate::weights::HubRef,
    /// Print the result as JSON (no progress).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WeightsListArgs {
    /// Print JSON (one array).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the synthetic dataset lives (made if absent) [default: data.root].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Dashboard theme: default | light | high-contrast | NAME | PATH.toml [default: ui.theme].
    #[arg(long)]
    pub theme: Option<String>,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Dataset root [default: the run's dataset (data.root in RUN/config.toml), else
    /// data.root].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Run folder to show, follow and train [default: train.run].
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Folder of run folders the Runs tab lists [default: the run's parent].
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// Theme: default | light | high-contrast | NAME | PATH.toml [default: ui.theme].
    #[arg(long)]
    pub theme: Option<String>,
    /// Device for the index and search models: auto | cpu | cuda:N [default: the run's train.device,
    /// or the CPU where this build or machine has no GPU].
    #[arg(long, value_parser = crate::config::parse_device)]
    pub device: Option<crate::config::DeviceChoice>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Run folder another process writes.
    #[arg(value_name = "RUN")]
    pub run: PathBuf,
    /// Dataset root for the Dataset, Triplets and Search tabs [default: the run's data.root].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Folder of run folders the Runs tab lists [default: the run's parent].
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// Theme: default | light | high-contrast | NAME | PATH.toml [default: ui.theme].
    #[arg(long)]
    pub theme: Option<String>,
    /// Device for the index and search models: auto | cpu | cuda:N [default: the run's train.device,
    /// or the CPU where this build or machine has no GPU].
    #[arg(long, value_parser = crate::config::parse_device)]
    pub device: Option<crate::config::DeviceChoice>,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Folder holding run folders [default: the parent of train.run].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print JSON (one array of runs).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder [default: data.root].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Number of items (products) [default: synth.items].
    #[arg(long, value_parser = sizes(MIN_ITEMS, MAX_ITEMS))]
    pub items: Option<usize>,
    /// Image side in pixels [default: synth.size].
    #[arg(long, value_parser = pixels(MIN_SIZE, MAX_SIZE))]
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
    /// Dataset root in the DeepFashion Consumer-to-shop layout [default: data.root; on a
    /// run (`eval --run`, `train --resume`): the run's dataset].
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

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Run folder (checkpoints, metrics.jsonl, config.toml) [default: train.run].
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Continue the run from its last checkpoint (weights, optimizer, position, time
    /// budget) with its own settings (RUN/config.toml, not --config); flags given here
    /// change them, each change printed and recorded in RUN/metrics.jsonl.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub overrides: TrainOverrides,
    /// Print every event as a JSON line on stdout instead of progress.
    #[arg(long)]
    pub json: bool,
}

/// Command-line overrides of `[model]` and `[train]` keys.
#[derive(Debug, Args, Default, Clone)]
pub struct TrainOverrides {
    /// resnet18 | resnet34 | resnet50 [default: model.backbone].
    #[arg(long, value_parser = parse_backbone)]
    pub backbone: Option<Backbone>,
    /// Input side in pixels [default: model.image_size].
    #[arg(long, value_parser = pixels(*IMAGE_SIZE.start(), *IMAGE_SIZE.end()))]
    pub image_size: Option<u32>,
    /// [default: train.epochs].
    #[arg(long, value_parser = sizes(1, MAX_EPOCHS))]
    pub epochs: Option<usize>,
    /// Batch size in the sampler's unit: items per step with P×K batches
    /// (train.pk_items; each brings train.pk_images images), triplets per step with the
    /// triplet sampler (train.batch) [default: train.pk_items or train.batch].
    #[arg(long, value_parser = sizes(2, MAX_BATCH))]
    pub batch: Option<usize>,
    /// Stop after this many optimizer steps in total [default: train.max_steps].
    #[arg(long, value_parser = sizes(0, MAX_STEPS))]
    pub max_steps: Option<usize>,
    /// Learning rate [default: train.lr].
    #[arg(long)]
    pub lr: Option<f64>,
    /// norm_softmax | proxy_anchor | multi_similarity | triplet [default: loss.kind].
    #[arg(long)]
    pub loss: Option<LossKind>,
    /// Triplet miner: offline | batch_hard | semi_hard [default: loss.mining].
    #[arg(long, value_parser = parse_mining)]
    pub mining: Option<Mining>,
    /// Stop after this wall-clock time with a checkpoint and a validation, e.g. 10m,
    /// 1h30m, 600s [default: train.time_limit].
    #[arg(long, value_name = "DURATION")]
    pub time_limit: Option<String>,
    /// auto | cpu | cuda:N [default: train.device].
    #[arg(long)]
    pub device: Option<String>,
    /// Random seed [default: train.seed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Backbone weights to start from: a .safetensors file, or hf:OWNER/NAME[@REV]
    /// from the Hugging Face cache (`vitrine weights pull` fetches it)
    /// [default: model.pretrained].
    #[arg(long, value_name = "PATH|hf:REPO")]
    pub pretrained: Option<PathBuf>,
}

fn parse_backbone(s: &str) -> Result<Backbone, String> {
    match s {
        "resnet18" => Ok(Backbone::Resnet18),
        "resnet34" => Ok(Backbone::Resnet34),
        "resnet50" => Ok(Backbone::Resnet50),
        _ => Err(format!(
            "unknown backbone `{s}`: expected resnet18, resnet34 or resnet50"
        )),
    }
}

fn parse_mining(s: &str) -> Result<Mining, String> {
    match s {
        "offline" => Ok(Mining::Offline),
        "batch_hard" => Ok(Mining::BatchHard),
        "semi_hard" => Ok(Mining::SemiHard),
        _ => Err(format!(
            "unknown mining `{s}`: expected offline, batch_hard or semi_hard"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Loader throughput: decode + crop + resize + normalise, images/s.
    Load(BenchLoadArgs),
    /// Training throughput on random inputs (the original's offline triplets: forward +
    /// backward + AdamW), triplets/s and images/s (3 per triplet), and the seconds per
    /// step each phase took.
    Train(BenchModelArgs),
    /// Forward-only embedding throughput on random inputs, images/s.
    Embed(BenchModelArgs),
    /// Index build time, exact-scan QPS, and recall@k / QPS of HNSW + re-rank settings.
    Search(BenchSearchArgs),
    /// Write clustered unit test vectors (like product embeddings) as .npy.
    Vectors(BenchVectorsArgs),
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Run folder (its config.toml gives the model; the index goes to RUN/index/).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Dataset root whose gallery to index [default: the run's dataset (data.root in
    /// RUN/config.toml)].
    #[arg(long, value_name = "DIR", conflicts_with = "images")]
    pub data: Option<PathBuf>,
    /// Index every image under this folder tree instead of a dataset's gallery.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Append the images under DIR to the existing local index (no rebuild).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["data", "images", "gallery", "shard", "finalize"])]
    pub add: Option<PathBuf>,
    /// Where the gallery goes: local (RUN/index/) | postgres [default: index.backend].
    #[arg(long)]
    pub backend: Option<crate::config::IndexBackend>,
    /// PostgreSQL URL, or env:NAME to read it from that variable (RUN/index/ then
    /// records the name, never a password) [default: index.pg_url].
    #[arg(long, value_name = "URL")]
    pub pg_url: Option<String>,
    /// The gallery's name in PostgreSQL [default: index.table].
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Embed only the I-th of N slices of the gallery into the version being loaded
    /// (one job per machine or GPU); --finalize makes it live once all are in.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::index::postgres::Shard>,
    /// Build the HNSW index of the version the shards loaded, make it live and record
    /// it in RUN/index/ (refused, naming them, while shards are missing).
    #[arg(long, conflicts_with_all = ["data", "images", "gallery", "shard", "checkpoint", "strict"])]
    pub finalize: bool,
    /// auto (best, else last) | best | last | PATH to a .safetensors file.
    #[arg(long, default_value = "auto")]
    pub checkpoint: crate::index::CheckpointChoice,
    /// Gallery protocol: test | val+test [default: data.gallery].
    #[arg(long)]
    pub gallery: Option<GalleryProtocol>,
    /// Missing image files are an error instead of skipped [default: data.strict].
    #[arg(long)]
    pub strict: bool,
    /// Device for the model: auto | cpu | cuda:N [default: the run's train.device,
    /// or the CPU where this build or machine has no GPU].
    #[arg(long, value_parser = crate::config::parse_device)]
    pub device: Option<crate::config::DeviceChoice>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Run folder holding the index.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Query image.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Number of results.
    #[arg(long, default_value_t = 20, value_parser = sizes(1, MAX_K))]
    pub k: usize,
    /// auto (the checkpoint the index was built with) | best | last | PATH (must be
    /// the checkpoint the index was built with).
    #[arg(long, default_value = "auto")]
    pub checkpoint: crate::index::CheckpointChoice,
    /// Scan every gallery vector instead of the HNSW shortlist.
    #[arg(long)]
    pub exact: bool,
    /// Print the query and result thumbnails inline in the terminal.
    #[arg(long)]
    pub show: bool,
    /// How `--show` draws: auto | kitty | sixel | iterm2 | halfblocks | off [default: ui.images].
    #[arg(long, value_name = "MODE", requires = "show")]
    pub image_mode: Option<crate::config::ImageMode>,
    /// Device for the model: auto | cpu | cuda:N [default: the run's train.device,
    /// or the CPU where this build or machine has no GPU].
    #[arg(long, value_parser = crate::config::parse_device)]
    pub device: Option<crate::config::DeviceChoice>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run folder (config.toml, checkpoints).
    #[arg(long, value_name = "DIR", required_unless_present = "raw_pixels")]
    pub run: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Gallery protocol: test | val+test [default: data.gallery].
    #[arg(long)]
    pub gallery: Option<GalleryProtocol>,
    /// auto (best, else last) | best | last | PATH to a .safetensors file.
    #[arg(long, default_value = "auto", conflicts_with_all = ["untrained", "raw_pixels"])]
    pub checkpoint: crate::index::CheckpointChoice,
    /// Evaluate the freshly initialised network (same seed): the baseline.
    #[arg(long)]
    pub untrained: bool,
    /// Score plain cosine on the pixels (ImageNet-normalised, at the run's or
    /// model.image_size), without any model: the floor a trained model must beat.
    #[arg(long, conflicts_with = "untrained")]
    pub raw_pixels: bool,
    /// Also report top-1/top-20 per small category, worst first.
    #[arg(long)]
    pub by_category: bool,
    /// Also list the N worst queries: their item's rank and the images ranked ahead.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub failures: u32,
    /// Device for the model: auto | cpu | cuda:N [default: the run's train.device,
    /// or the CPU where this build or machine has no GPU].
    #[arg(long, value_parser = crate::config::parse_device)]
    pub device: Option<crate::config::DeviceChoice>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchSearchArgs {
    /// Base vectors (.npy, float32, rows are vectors).
    #[arg(long, value_name = "B.npy")]
    pub base: PathBuf,
    /// Query vectors (.npy, same width).
    #[arg(long, value_name = "Q.npy")]
    pub queries: PathBuf,
    #[arg(long, default_value_t = 20, value_parser = sizes(1, MAX_K))]
    pub k: usize,
    /// HNSW links per node [default: index.m].
    #[arg(long, value_parser = sizes(2, 128))]
    pub m: Option<usize>,
    /// HNSW build beam [default: index.ef_construction].
    #[arg(long, value_parser = sizes(1, MAX_EF))]
    pub ef_construction: Option<usize>,
    /// Beam widths to measure (comma-separated) [default: a sweep from k to 16·k,
    /// every 8 up to 128, bisected to the first beam reaching index.target_recall
    /// and recall 0.9, 0.95, 0.99, 0.995].
    #[arg(long, value_delimiter = ',', value_parser = sizes(1, MAX_EF))]
    pub ef: Vec<usize>,
    /// Queries timed for the exact scan (it is slow).
    #[arg(long, default_value_t = 500, value_parser = sizes(0, MAX_VECTORS))]
    pub exact_queries: usize,
    /// Also time hnsw_rs's own search on the same graph.
    #[arg(long)]
    pub hnsw_rs: bool,
    /// Which code builds the graph: vitrine | hnsw_rs [default: index.builder].
    #[arg(long)]
    pub builder: Option<crate::config::IndexBuilder>,
    /// Also measure a backend beside the in-process index: postgres (load, HNSW
    /// build, recall and latency through pgvector) [default: local only].
    #[arg(long)]
    pub backend: Option<crate::config::IndexBackend>,
    /// PostgreSQL URL or env:NAME for --backend postgres [default: index.pg_url].
    #[arg(long, value_name = "URL")]
    pub pg_url: Option<String>,
    /// Table the benchmark loads (dropped at the end; refused if vitrine did not
    /// create it).
    #[arg(long, value_name = "NAME", default_value = "vitrine_bench")]
    pub table: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchVectorsArgs {
    /// Number of vectors.
    #[arg(long, value_parser = sizes(1, MAX_VECTORS))]
    pub n: usize,
    #[arg(long, default_value_t = 512, value_parser = sizes(1, MAX_EMBEDDING_DIM))]
    pub dim: usize,
    /// Number of clusters (products).
    #[arg(long, default_value_t = 1000, value_parser = sizes(1, MAX_VECTORS))]
    pub clusters: usize,
    /// Clusters per group (category); 0 = no groups.
    #[arg(long, default_value_t = 50, value_parser = sizes(0, MAX_VECTORS))]
    pub group_size: usize,
    /// Noise norm around a cluster centre (0.5 ≈ cosine 0.8 within a cluster).
    #[arg(long, default_value_t = 0.5)]
    pub spread: f32,
    /// Seed of the cluster centres (use the same for base and queries).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output .npy file.
    #[arg(long, value_name = "F.npy")]
    pub out: PathBuf,
    /// Also write this many query vectors (fresh draws from the same clusters)…
    #[arg(long, default_value_t = 1000, value_parser = sizes(0, MAX_VECTORS))]
    pub queries: usize,
    /// …to this file.
    #[arg(long, value_name = "Q.npy")]
    pub queries_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// resnet18 | resnet34 | resnet50.
    #[arg(long, value_parser = parse_backbone, default_value = "resnet18")]
    pub backbone: Backbone,
    #[arg(long, default_value_t = 64, value_parser = pixels(*IMAGE_SIZE.start(), *IMAGE_SIZE.end()))]
    pub image_size: u32,
    /// Triplets per step (train) or images per batch (embed).
    #[arg(long, default_value_t = 16, value_parser = sizes(1, MAX_BATCH))]
    pub batch: usize,
    /// Timed steps, after one warm-up step.
    #[arg(long, default_value_t = 5, value_parser = sizes(1, MAX_STEPS))]
    pub steps: usize,
    /// First trainable stage (0 = everything) [default: model.train_from_stage].
    #[arg(long, value_parser = sizes(0, 6))]
    pub train_from_stage: Option<usize>,
    /// auto | cpu | cuda:N [default: train.device].
    #[arg(long)]
    pub device: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchLoadArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Output side in pixels [default: model.image_size].
    #[arg(long, value_parser = pixels(*IMAGE_SIZE.start(), *IMAGE_SIZE.end()))]
    pub image_size: Option<u32>,
    /// Images per batch.
    #[arg(long, default_value_t = 64, value_parser = sizes(1, MAX_BATCH))]
    pub batch: usize,
    /// Batches to time (after one warm-up batch).
    #[arg(long, default_value_t = 20, value_parser = sizes(1, MAX_STEPS))]
    pub batches: usize,
    /// Print JSON (`images_per_s`).
    #[arg(long)]
    pub json: bool,
}
