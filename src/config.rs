//! Settings: `config.toml` at the repository top documents every key with its
//! default; the same values are compiled in as `Config::default()` (a test keeps the
//! two equal). A user file passed with `--config` overrides any subset of keys.

mod choices;

pub use choices::{
    DeviceChoice, ImageMode, IndexBackend, IndexBuilder, PlotMarker, Schedule, parse_device,
    redact_pg_url,
};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::deepfashion::GalleryProtocol;
use crate::data::sampler::SamplerKind;
use crate::model::embedder::MAX_GEM_P;
use crate::model::{Backbone, EmbedderConfig, LossConfig, LossKind, Precision};

/// The shipped, documented defaults.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}{}: invalid value for `{key}`: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        path: String,
        line: Option<usize>,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data: DataConfig,
    pub synth: SynthConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub loss: LossConfig,
    pub augment: AugmentConfig,
    pub index: IndexConfig,
    pub ui: UiConfig,
}

#[allow(clippy::derivable_impls)]
impl Default for Config {
    fn default() -> Self {
        Self {
            data: DataConfig::default(),
            synth: SynthConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            loss: LossConfig::default(),
            augment: AugmentConfig::default(),
            index: IndexConfig::default(),
            ui: UiConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: Backbone,
    pub image_size: u32,
    pub embedding_dim: usize,
    pub dropout: f32,
    pub train_from_stage: usize,
    /// BatchNorm on the embedding before its L2 normalisation.
    pub bnneck: bool,
    /// Embed each image and its mirror image and average them (index, search,
    /// evaluation and validation; never training).
    pub flip_average: bool,
    /// Embed each image and its colour negative and average them (as `flip_average`).
    pub invert_average: bool,
    /// Exponent of the generalised-mean pool over the last feature map (1 = average).
    pub gem_p: f32,
    /// The numbers the backbone's forward convs multiply (embedding and training).
    pub precision: Precision,
    /// Empty: random initialisation; a safetensors file, or `hf:OWNER/NAME[@REV]`
    /// (resolved from the Hugging Face cache, never downloaded here).
    pub pretrained: PathBuf,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            image_size: 64,
            embedding_dim: 512,
            dropout: 0.1,
            train_from_stage: 0,
            bnneck: true,
            flip_average: false,
            invert_average: false,
            gem_p: 1.0,
            precision: Precision::Fp32,
            pretrained: PathBuf::new(),
        }
    }
}

impl ModelConfig {
    pub fn embedder(&self) -> EmbedderConfig {
        EmbedderConfig {
            backbone: self.backbone,
            embedding_dim: self.embedding_dim,
            dropout: self.dropout,
            train_from_stage: self.train_from_stage,
            bnneck: self.bnneck,
            flip_average: self.flip_average,
            invert_average: self.invert_average,
            gem_p: self.gem_p,
            precision: self.precision,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub run: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// How batches are formed: P×K items × images, or the original's triplets.
    pub sampler: SamplerKind,
    /// P×K batches: items per batch, images per item, items per small category.
    pub pk_items: usize,
    pub pk_images: usize,
    pub pk_per_category: usize,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub grad_clip: f64,
    /// Decay of the weights' moving average that validation and checkpoints use
    /// (0 = off: the live weights).
    pub ema: f64,
    pub device: String,
    pub seed: u64,
    pub max_steps: usize,
    /// Wall-clock budget (`"10m"`, `"1h30m"`, `"600s"`); empty = none.
    pub time_limit: String,
    pub checkpoint_every: usize,
    pub val_queries: usize,
    /// At most about this many epoch-end validations a run, spread over its steps or
    /// its time limit (0 = every epoch).
    pub validations: usize,
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            run: PathBuf::from("runs/demo"),
            epochs: 10,
            batch: 16,
            lr: 1e-3,
            weight_decay: 1e-4,
            sampler: SamplerKind::Auto,
            pk_items: 16,
            pk_images: 4,
            pk_per_category: 2,
            schedule: Schedule::Cosine,
            warmup_steps: 50,
            grad_clip: 0.0,
            ema: 0.0,
            device: "auto".into(),
            seed: 42,
            max_steps: 0,
            time_limit: String::new(),
            checkpoint_every: 100,
            val_queries: 0,
            validations: 20,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub root: PathBuf,
    pub gallery: GalleryProtocol,
    pub strict: bool,
    pub crop: bool,
    pub workers: usize,
    pub prefetch: usize,
    /// Largest image decoded, in pixels; bigger files count as unreadable.
    pub max_image_pixels: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("data/synth"),
            gallery: GalleryProtocol::Test,
            strict: false,
            crop: true,
            workers: 0,
            prefetch: 2,
            max_image_pixels: 40_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    pub items: usize,
    pub size: u32,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            items: 400,
            size: 128,
            seed: 7,
        }
    }
}

/// `[index]`: the gallery index (`vitrine index`, `search`, `eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// HNSW links per node (layer 0 keeps up to 2·m).
    pub m: usize,
    /// HNSW beam width while building.
    pub ef_construction: usize,
    /// Which code builds the HNSW graph: vitrine's parallel inserter or hnsw_rs's.
    pub builder: IndexBuilder,
    /// Graph candidates re-ranked by exact cosine; 0 = 5·k.
    pub shortlist: usize,
    /// HNSW beam width while searching; 0 = the one `vitrine index` measured to reach
    /// `target_recall` (an index without that measurement: the shortlist).
    pub ef_search: usize,
    /// Recall@20 against exact search that the beam `vitrine index` chooses must
    /// reach, in (0, 1].
    pub target_recall: f64,
    /// Images embedded per batch.
    pub batch: usize,
    /// Where `vitrine index` puts the gallery: `RUN/index/` or PostgreSQL.
    pub backend: IndexBackend,
    /// The PostgreSQL connection string, or `env:NAME` to read it from the environment
    /// variable NAME (so that no password is written into a config or run folder).
    pub pg_url: String,
    /// The gallery's name in PostgreSQL: a view of that name shows the live version,
    /// `<table>_v<N>` hold the versions, `<table>_versions` describes them.
    pub table: String,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            builder: IndexBuilder::Vitrine,
            shortlist: 0,
            ef_search: 0,
            target_recall: 0.99,
            batch: 64,
            backend: IndexBackend::Local,
            pg_url: "env:VITRINE_PG_URL".into(),
            table: "vitrine_gallery".into(),
        }
    }
}

/// `[ui]`: the dashboard (`vitrine`, `vitrine dashboard`, `demo`, `watch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Built-in theme (`default`, `light`, `high-contrast`), a theme file in the
    /// user's `~/.config/vitrine/themes/NAME.toml`, or a path to a `.toml` file.
    pub theme: String,
    /// Thumbnails: auto | kitty | sixel | iterm2 | halfblocks | off.
    pub images: ImageMode,
    /// Loss chart points: braille | ascii.
    pub plot_marker: PlotMarker,
    /// Most frames drawn per second.
    pub fps: u32,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            theme: "default".into(),
            images: ImageMode::Auto,
            plot_marker: PlotMarker::Braille,
            fps: 20,
        }
    }
}

/// The largest config file read (the full commented default is about 10 KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A config file's text: a regular file of at most [`MAX_CONFIG_BYTES`] (a run's
/// `config.toml` is read by `watch` and the dashboard, whatever the folder holds).
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    crate::fsutil::read_small_text(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Config {
    /// The built-in defaults, or those overridden by the file at `path`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = read_config_file(path)?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let migrated = migrate(text, origin);
        let text = migrated.as_deref().unwrap_or(text);
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: origin.to_string(),
                line: key_line(text, &key),
                key,
                reason,
            })?;
        Ok(config)
    }

    /// A run's own `config.toml`. Runs written before a model setting existed were
    /// trained without it: such a key takes its old meaning (no BNNeck), not today's
    /// default, so their checkpoints keep loading.
    pub fn load_run(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config_file(path)?;
        let mut config = Self::from_toml_str(&text, &path.display().to_string())?;
        let has_model_key = |key: &str| {
            toml::from_str::<toml::Table>(&text)
                .ok()
                .and_then(|t| t.get("model")?.as_table()?.get(key).cloned())
                .is_some()
        };
        if !has_model_key("bnneck") {
            config.model.bnneck = false;
        }
        if !has_model_key("gem_p") {
            config.model.gem_p = 1.0;
        }
        Ok(config)
    }

    /// The batch sampler `train.sampler` resolves to: `auto` takes the original's
    /// triplets for offline triplet loss (they are what it is defined on), else P×K.
    pub fn sampler(&self) -> SamplerKind {
        match self.train.sampler {
            SamplerKind::Auto
                if self.loss.kind == LossKind::Triplet
                    && self.loss.mining == crate::model::Mining::Offline =>
            {
                SamplerKind::Triplets
            }
            SamplerKind::Auto => SamplerKind::Pk,
            other => other,
        }
    }

    /// `train.time_limit` as a duration (`None`: no limit).
    pub fn time_limit(&self) -> Option<std::time::Duration> {
        parse_duration(&self.train.time_limit).ok().flatten()
    }

    /// Checks ranges that types alone cannot; returns the dotted key at fault. Every
    /// size has an upper bound too: a huge value would overflow arithmetic or abort on
    /// allocation far from here, instead of being an error naming the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        let d = &self.data;
        within(
            "data.workers",
            d.workers,
            0,
            MAX_THREADS,
            " (0 = one per core)",
        )?;
        within("data.prefetch", d.prefetch, 1, 64, " batches")?;
        within(
            "data.max_image_pixels",
            d.max_image_pixels,
            1,
            MAX_IMAGE_PIXELS,
            " pixels",
        )?;
        within(
            "synth.items",
            self.synth.items,
            crate::data::synth::MIN_ITEMS,
            crate::data::synth::MAX_ITEMS,
            "",
        )?;
        // The generator's own range, the one `synth --size` accepts.
        within(
            "synth.size",
            self.synth.size,
            crate::data::synth::MIN_SIZE,
            crate::data::synth::MAX_SIZE,
            " pixels",
        )?;
        let m = &self.model;
        within(
            "model.image_size",
            m.image_size,
            *IMAGE_SIZE.start(),
            *IMAGE_SIZE.end(),
            " pixels",
        )?;
        within(
            "model.embedding_dim",
            m.embedding_dim,
            1,
            MAX_EMBEDDING_DIM,
            "",
        )?;
        if !(0.0..1.0).contains(&m.dropout) {
            return fail("model.dropout", "must be in [0, 1)");
        }
        if !(1.0..=MAX_GEM_P).contains(&m.gem_p) {
            return fail(
                "model.gem_p",
                &format!("must be in [1, {MAX_GEM_P}] (1 = average pool)"),
            );
        }
        if let Err(e) = crate::weights::Pretrained::parse(&m.pretrained) {
            return fail("model.pretrained", &e);
        }
        if m.train_from_stage > 6 {
            return fail(
                "model.train_from_stage",
                "must be 0..=6 (6 trains only the head)",
            );
        }
        let t = &self.train;
        within("train.epochs", t.epochs, 1, MAX_EPOCHS, "")?;
        within("train.batch", t.batch, 2, MAX_BATCH, " triplets")?;
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return fail("train.lr", "must be a positive number");
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return fail("train.weight_decay", "must be zero or positive");
        }
        within(
            "train.pk_items",
            t.pk_items,
            2,
            MAX_BATCH,
            " items per batch",
        )?;
        within(
            "train.pk_images",
            t.pk_images,
            2,
            64,
            " images per item (2: a positive pair)",
        )?;
        within("train.pk_per_category", t.pk_per_category, 1, MAX_BATCH, "")?;
        within("train.warmup_steps", t.warmup_steps, 0, MAX_STEPS, "")?;
        within(
            "train.max_steps",
            t.max_steps,
            0,
            MAX_STEPS,
            " (0 = all epochs)",
        )?;
        within(
            "train.checkpoint_every",
            t.checkpoint_every,
            0,
            MAX_STEPS,
            " (0 = epochs only)",
        )?;
        within(
            "train.threads",
            t.threads,
            0,
            MAX_THREADS,
            " (0 = one per core)",
        )?;
        if let Err(e) = parse_duration(&t.time_limit) {
            return fail("train.time_limit", &e);
        }
        self.loss.validate()?;
        if self.sampler() == SamplerKind::Pk
            && self.loss.kind == LossKind::Triplet
            && self.loss.mining == crate::model::Mining::Offline
        {
            return fail(
                "train.sampler",
                "offline triplets (loss.kind = \"triplet\", loss.mining = \"offline\") need train.sampler = \"triplets\" or \"auto\"",
            );
        }
        self.augment.validate()?;
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return fail("train.grad_clip", "must be zero (off) or positive");
        }
        if !(0.0..1.0).contains(&t.ema) {
            return fail("train.ema", "must be at least 0 (off) and below 1");
        }
        if let Err(e) = parse_device(&t.device) {
            return fail("train.device", &e);
        }
        let i = &self.index;
        within("index.m", i.m, 2, 128, "")?;
        within(
            "index.ef_construction",
            i.ef_construction,
            i.m,
            MAX_EF,
            " (at least index.m)",
        )?;
        within(
            "index.shortlist",
            i.shortlist,
            0,
            MAX_SHORTLIST,
            " (0 = 5 × k)",
        )?;
        within(
            "index.ef_search",
            i.ef_search,
            0,
            MAX_EF,
            " (0 = the beam `vitrine index` measured)",
        )?;
        // Written so that NaN fails too.
        if !(i.target_recall > 0.0 && i.target_recall <= 1.0) {
            return fail(
                "index.target_recall",
                &format!(
                    "{} is not a recall above 0 and at most 1 (e.g. 0.99)",
                    i.target_recall
                ),
            );
        }
        within("index.batch", i.batch, 1, MAX_BATCH, " images")?;
        if let Err(e) = check_pg_url(&i.pg_url) {
            return fail("index.pg_url", &e);
        }
        if let Err(e) = check_table_name(&i.table) {
            return fail("index.table", &e);
        }
        if self.ui.theme.trim().is_empty() {
            return fail("ui.theme", "must name a theme (e.g. default)");
        }
        within("ui.fps", self.ui.fps, 1, 60, " frames per second")?;
        Ok(())
    }
}

/// Longest `index.table`: PostgreSQL cuts names at 63 bytes, and vitrine appends
/// `_versions` or `_v<N>`.
pub const MAX_TABLE_NAME: usize = 48;

/// `index.pg_url` / `--pg-url`: `env:NAME` or a `postgres://` / `postgresql://` URL.
pub fn check_pg_url(url: &str) -> Result<(), String> {
    if let Some(name) = url.strip_prefix("env:") {
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "`{url}`: env: must be followed by an environment variable name (letters, digits, _)"
            ));
        }
        return Ok(());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(());
    }
    Err(format!(
        "`{}`: expected postgres://user@host:port/database or env:NAME (an environment variable holding it)",
        redact_pg_url(url)
    ))
}

/// `index.table` / `--table`: a lower-case SQL name vitrine can extend.
pub fn check_table_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_TABLE_NAME;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}`: expected a lower-case name of letters, digits and _ (at most {MAX_TABLE_NAME}, not starting with a digit)"
        ))
    }
}

/// Upper bounds of the size settings, shared by the config file and the command line.
/// Results per query (`search --k`, `bench search --k`).
pub const MAX_K: usize = 10_000;
/// `index.shortlist`: graph candidates re-ranked per query.
pub const MAX_SHORTLIST: usize = 100_000;
/// HNSW beam widths (`index.ef_search`, `index.ef_construction`, `--ef`).
pub const MAX_EF: usize = 100_000;
/// Images or triplets per batch, items per P×K batch.
pub const MAX_BATCH: usize = 4096;
/// Decode and compute threads.
pub const MAX_THREADS: usize = 1024;
pub const MAX_EMBEDDING_DIM: usize = 8192;
pub const MAX_EPOCHS: usize = 100_000;
/// Step counts (`max_steps`, `warmup_steps`, `checkpoint_every`).
pub const MAX_STEPS: usize = 1_000_000_000;
/// `data.max_image_pixels`: one gigapixel (8 GB for a 16-bit RGBA decode).
pub const MAX_IMAGE_PIXELS: u64 = 1_000_000_000;
/// Model input side in pixels (`model.image_size`, `--image-size`).
pub const IMAGE_SIZE: std::ops::RangeInclusive<u32> = 32..=1024;

/// `Err((key, reason))` unless `lo <= value <= hi`; the reason quotes the value.
fn within<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<(), (String, String)> {
    if lo <= value && value <= hi {
        Ok(())
    } else {
        Err((
            key.to_string(),
            format!("{key} = {value} must be between {lo} and {hi}{unit}"),
        ))
    }
}

/// Moves keys of earlier versions to where they live now (`train.margin` and
/// `train.mining` → `[loss]`, with `loss.kind = "triplet"`, the only loss there was);
/// `None` when there is nothing to move. Unparsable text is left to the parser's
/// error.
fn migrate(text: &str, origin: &str) -> Option<String> {
    let mut table: toml::Table = toml::from_str(text).ok()?;
    let train = table.get_mut("train")?.as_table_mut()?;
    let moved: Vec<(String, toml::Value)> = ["margin", "mining"]
        .into_iter()
        .filter_map(|k| train.remove(k).map(|v| (k.to_string(), v)))
        .collect();
    if moved.is_empty() {
        return None;
    }
    tracing::warn!(
        "{origin}: train.{} moved to [loss]; read as loss.kind = \"triplet\" with the same values",
        moved
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", train.")
    );
    let loss = table
        .entry("loss")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()?;
    loss.entry("kind")
        .or_insert_with(|| toml::Value::String("triplet".into()));
    for (k, v) in moved {
        loss.entry(k).or_insert(v);
    }
    toml::to_string(&table).ok()
}

/// Parses a duration such as `"10m"`, `"1h30m"`, `"90s"`, `"2h"` or plain seconds
/// (`"600"`); empty or `"0"` means no limit.
pub fn parse_duration(text: &str) -> Result<Option<std::time::Duration>, String> {
    let t = text.trim();
    if t.is_empty() || t == "0" {
        return Ok(None);
    }
    let bad = || format!("`{t}` is not a duration: use e.g. 10m, 1h30m, 90s or 600");
    // Beyond a year a limit means none, and times that far ahead overflow `Instant`.
    let checked = |secs: f64| {
        if !(secs > 0.0 && secs.is_finite()) {
            Err(bad())
        } else if secs > MAX_DURATION_SECS {
            Err(format!(
                "`{t}` is longer than the longest time limit, 366 days"
            ))
        } else {
            Ok(Some(std::time::Duration::from_secs_f64(secs)))
        }
    };
    if let Ok(secs) = t.parse::<f64>() {
        return checked(secs);
    }
    let mut total = 0f64;
    let mut number = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return Err(bad()),
        };
        let value: f64 = number.parse().map_err(|_| bad())?;
        total += value * unit;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    checked(total)
}

/// The longest time limit: 366 days.
const MAX_DURATION_SECS: f64 = 366.0 * 86_400.0;

/// 1-based line of `section.key` in a TOML text (plain `[section]` tables only).
pub fn key_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current == section
            && let Some((k, _)) = line.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests;
