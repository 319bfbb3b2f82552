//! Settings: `config.toml` at the repository top documents every key with its
//! default; the same values are compiled in as `Config::default()` (a test keeps the
//! two equal). A user file passed with `--config` overrides any subset of keys.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::deepfashion::GalleryProtocol;
use crate::model::{Backbone, EmbedderConfig, Mining};
use crate::train::optim::Schedule;
use crate::tui::settings::{ImageMode, PlotMarker};

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
    /// Empty: random initialisation.
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
    pub margin: f32,
    pub mining: Mining,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub grad_clip: f64,
    pub device: String,
    pub seed: u64,
    pub max_steps: usize,
    pub checkpoint_every: usize,
    pub val_queries: usize,
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            run: PathBuf::from("runs/demo"),
            epochs: 10,
            batch: 16,
            lr: 1e-4,
            weight_decay: 1e-4,
            margin: 0.5,
            mining: Mining::BatchHard,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            grad_clip: 0.0,
            device: "auto".into(),
            seed: 42,
            max_steps: 0,
            checkpoint_every: 100,
            val_queries: 0,
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
    /// Graph candidates re-ranked by exact cosine; 0 = 5·k.
    pub shortlist: usize,
    /// HNSW beam width while searching; 0 = the shortlist.
    pub ef_search: usize,
    /// Images embedded per batch.
    pub batch: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            shortlist: 0,
            ef_search: 0,
            batch: 64,
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

impl Config {
    /// The built-in defaults, or those overridden by the file at `path`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
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

    /// Checks ranges that types alone cannot; returns the dotted key at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if self.data.prefetch == 0 {
            return fail("data.prefetch", "must be at least 1");
        }
        if self.synth.items < 12 {
            return fail("synth.items", "must be at least 12");
        }
        if !(32..=1024).contains(&self.synth.size) {
            return fail("synth.size", "must be between 32 and 1024 pixels");
        }
        if !(32..=1024).contains(&self.model.image_size) {
            return fail("model.image_size", "must be between 32 and 1024 pixels");
        }
        if self.model.embedding_dim == 0 {
            return fail("model.embedding_dim", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return fail("model.dropout", "must be in [0, 1)");
        }
        if self.model.train_from_stage > 6 {
            return fail(
                "model.train_from_stage",
                "must be 0..=6 (6 trains only the head)",
            );
        }
        if self.train.epochs == 0 {
            return fail("train.epochs", "must be at least 1");
        }
        if self.train.batch < 2 {
            return fail("train.batch", "must be at least 2 triplets");
        }
        if !(self.train.lr > 0.0 && self.train.lr.is_finite()) {
            return fail("train.lr", "must be a positive number");
        }
        if !(self.train.weight_decay >= 0.0 && self.train.weight_decay.is_finite()) {
            return fail("train.weight_decay", "must be zero or positive");
        }
        if !(self.train.margin > 0.0 && self.train.margin.is_finite()) {
            return fail("train.margin", "must be a positive number");
        }
        if !(self.train.grad_clip >= 0.0 && self.train.grad_clip.is_finite()) {
            return fail("train.grad_clip", "must be zero (off) or positive");
        }
        if let Err(e) = crate::train::device::parse_device(&self.train.device) {
            return fail("train.device", &e);
        }
        if !(2..=128).contains(&self.index.m) {
            return fail("index.m", "must be between 2 and 128");
        }
        if self.index.ef_construction < self.index.m {
            return fail("index.ef_construction", "must be at least index.m");
        }
        if self.index.batch == 0 {
            return fail("index.batch", "must be at least 1");
        }
        if self.ui.theme.trim().is_empty() {
            return fail("ui.theme", "must name a theme (e.g. default)");
        }
        if !(1..=60).contains(&self.ui.fps) {
            return fail("ui.fps", "must be between 1 and 60 frames per second");
        }
        Ok(())
    }
}

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
mod tests {
    use super::*;

    /// Dotted names of every leaf key.
    fn keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let name = format!("{prefix}{k}");
            match v {
                toml::Value::Table(inner) => keys(inner, &format!("{name}."), out),
                _ => out.push(name),
            }
        }
    }

    #[test]
    fn shipped_file_equals_builtin_defaults() {
        let parsed = Config::from_toml_str(DEFAULT_CONFIG_TOML, "config.toml").expect("parse");
        assert_eq!(parsed, Config::default());
        // And the file documents every key (serde defaults would hide a missing one).
        let file: toml::Table = toml::from_str(DEFAULT_CONFIG_TOML).expect("table");
        let all = toml::Table::try_from(Config::default()).expect("serialize");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keys(&file, "", &mut a);
        keys(&all, "", &mut b);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn key_line_finds_keys_in_sections() {
        let text = "[data]\nroot = \"x\"\n\n[synth]\n# c\nitems = 3\n";
        assert_eq!(key_line(text, "synth.items"), Some(6));
        assert_eq!(key_line(text, "data.root"), Some(2));
        assert_eq!(key_line(text, "data.items"), None);
    }
}
