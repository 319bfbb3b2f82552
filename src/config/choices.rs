//! Settings that are choices among names: the device, the learning-rate schedule,
//! how the dashboard draws thumbnails and its loss chart's marker. They live with the
//! configuration (which parses them) so that `config` depends on no other layer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `train.device`: "auto" | "cpu" | "cuda:N".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    match s {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| format!("unknown device `{s}`: expected auto, cpu or cuda:N")),
    }
}

/// `train.schedule`: the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant learning rate after warm-up.
    #[default]
    Constant,
    /// Cosine decay to zero over the run after warm-up.
    Cosine,
}

/// How thumbnails reach the terminal (`ui.images`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageMode {
    /// Ask the terminal once at start-up (kitty, sixel, iTerm2), half-blocks in tmux
    /// or when it does not answer.
    #[default]
    Auto,
    Kitty,
    Sixel,
    Iterm2,
    /// Unicode half blocks with colours: works in every colour terminal, tmux and SSH.
    Halfblocks,
    /// No pictures: file names only.
    Off,
}

impl ImageMode {
    pub const ALL: [ImageMode; 6] = [
        ImageMode::Auto,
        ImageMode::Kitty,
        ImageMode::Sixel,
        ImageMode::Iterm2,
        ImageMode::Halfblocks,
        ImageMode::Off,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ImageMode::Auto => "auto",
            ImageMode::Kitty => "kitty",
            ImageMode::Sixel => "sixel",
            ImageMode::Iterm2 => "iterm2",
            ImageMode::Halfblocks => "halfblocks",
            ImageMode::Off => "off",
        }
    }
}

impl fmt::Display for ImageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown image mode `{s}`: expected auto, kitty, sixel, iterm2, halfblocks or off")
            })
    }
}

/// Points of the loss chart (`ui.plot_marker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlotMarker {
    /// Unicode Braille dots: 2×4 points per cell (needs a font with Braille glyphs).
    #[default]
    Braille,
    /// Plain ASCII characters, one point per cell.
    Ascii,
}

impl FromStr for PlotMarker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "braille" => Ok(Self::Braille),
            "ascii" => Ok(Self::Ascii),
            _ => Err(format!(
                "unknown plot marker `{s}`: expected braille or ascii"
            )),
        }
    }
}
