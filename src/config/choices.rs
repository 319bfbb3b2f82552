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

/// `index.builder`: which code inserts the HNSW graph (both write hnsw_rs's dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexBuilder {
    /// vitrine's own parallel inserter (`index::hnsw_insert`), hnswlib's algorithm.
    #[default]
    Vitrine,
    /// hnsw_rs's insertion.
    HnswRs,
}

impl IndexBuilder {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vitrine => "vitrine",
            Self::HnswRs => "hnsw_rs",
        }
    }
}

impl fmt::Display for IndexBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IndexBuilder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vitrine" => Ok(Self::Vitrine),
            "hnsw_rs" => Ok(Self::HnswRs),
            _ => Err(format!(
                "unknown HNSW builder `{s}`: expected vitrine or hnsw_rs"
            )),
        }
    }
}

/// `index.backend`: where `vitrine index` puts the gallery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexBackend {
    /// `RUN/index/`: the vectors and an HNSW graph, searched in-process.
    #[default]
    Local,
    /// A versioned table in PostgreSQL with pgvector's HNSW index.
    Postgres,
}

impl IndexBackend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Postgres => "postgres",
        }
    }
}

impl fmt::Display for IndexBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IndexBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "postgres" => Ok(Self::Postgres),
            _ => Err(format!("unknown backend `{s}`: expected local or postgres")),
        }
    }
}

/// A PostgreSQL connection string without its password: the password of a URL's user
/// part (`postgres://user:secret@host` → `postgres://user@host`) and every `password`
/// parameter (`?password=…`, `password=… host=…`) are cut. What vitrine shows and
/// writes into run folders; `env:NAME` comes back unchanged.
pub fn redact_pg_url(url: &str) -> String {
    if url.starts_with("env:") {
        return url.to_string();
    }
    let mut out = url.to_string();
    // The user part of a URL: between `://` and the last `@` (a password may hold an
    // unescaped `/` or `?`; cutting too much is harmless, too little is not).
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            let user = &rest[..at];
            if let Some(colon) = user.find(':') {
                let cut = scheme_end + 3 + colon..scheme_end + 3 + at;
                out.replace_range(cut, "");
            }
        }
    }
    // `password=…` as a URL parameter or a key=value pair (quoted or not).
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = find_password_key(rest) {
        redacted.push_str(&rest[..at]);
        let value = &rest[at + "password=".len()..];
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map_or(value.len(), |e| e + 2)
        } else {
            value.find(['&', ' ']).unwrap_or(value.len())
        };
        rest = &value[end..];
        // Drop the separator before it too, so no empty parameter is left behind.
        if redacted.ends_with('&') || redacted.ends_with(' ') {
            redacted.pop();
        } else if redacted.ends_with('?') && rest.starts_with('&') {
            rest = &rest[1..];
        }
    }
    redacted.push_str(rest);
    if redacted.ends_with('?') {
        redacted.pop();
    }
    redacted
}

/// Where a `password=` key starts (at the start, or after `?`, `&` or a space).
fn find_password_key(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("password=") {
        let at = from + i;
        if at == 0 || matches!(s.as_bytes()[at - 1], b'?' | b'&' | b' ') {
            return Some(at);
        }
        from = at + 1;
    }
    None
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

#[cfg(test)]
mod pg_url_tests {
    use super::redact_pg_url;

    #[test]
    fn passwords_never_survive_redaction() {
        for (url, shown) in [
            (
                "postgres://app:s3cr3t@db:5432/shop",
                "postgres://app@db:5432/shop",
            ),
            (
                "postgresql://app:p%40ss@10.0.0.1/shop?sslmode=disable",
                "postgresql://app@10.0.0.1/shop?sslmode=disable",
            ),
            (
                "postgres://app@db/shop?password=s3cr3t&application_name=x",
                "postgres://app@db/shop?application_name=x",
            ),
            (
                "postgres://app@db/shop?application_name=x&password=s3cr3t",
                "postgres://app@db/shop?application_name=x",
            ),
            ("postgres://db/shop?password=s3cr3t", "postgres://db/shop"),
            (
                "host=db user=app password='s 3cr3t' dbname=shop",
                "host=db user=app dbname=shop",
            ),
            ("postgres://app@db/shop", "postgres://app@db/shop"),
            ("postgres://app:pa/ss?@db/shop", "postgres://app@db/shop"),
            ("env:VITRINE_PG_URL", "env:VITRINE_PG_URL"),
        ] {
            assert_eq!(redact_pg_url(url), shown, "{url}");
        }
    }
}
