//! Themes: flat TOML files of colours (`themes/*.toml`) resolved into ratatui
//! [`Style`]s, so widgets never parse colours. The built-ins (`default`, `light`,
//! `high-contrast`) are compiled in; a file `~/.config/vitrine/themes/NAME.toml`
//! (under `$XDG_CONFIG_HOME` when set) overrides the built-in of that name, and any
//! path to a `.toml` file works too. Keys a file leaves out keep the default theme's
//! colour; an unknown key or an unreadable colour is an error naming file, line and key.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

/// The compiled-in themes, by name.
pub const BUILTIN: [(&str, &str); 3] = [
    ("default", include_str!("../themes/default.toml")),
    ("light", include_str!("../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../themes/high-contrast.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ThemeError {
    #[error(
        "unknown theme `{name}`: the built-ins are default, light and high-contrast; or put {name}.toml in {dir}, or pass a path to a .toml file"
    )]
    Unknown { name: String, dir: String },
    #[error("cannot read theme file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("theme {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("theme {origin}{}: `{key}`: `{value}` is not a colour (use \"#rrggbb\" or black, red, green, yellow, blue, magenta, cyan, gray, white, reset)", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Colour {
        origin: String,
        line: Option<usize>,
        key: String,
        value: String,
    },
}

/// A theme file as written: every colour optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: Option<String>,
    background: Option<String>,
    foreground: Option<String>,
    muted: Option<String>,
    accent: Option<String>,
    border: Option<String>,
    selection_bg: Option<String>,
    selection_fg: Option<String>,
    success: Option<String>,
    warning: Option<String>,
    error: Option<String>,
    train_loss: Option<String>,
    train_loss_smooth: Option<String>,
    val_loss: Option<String>,
    hit: Option<String>,
    miss: Option<String>,
}

/// Resolved colours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theme {
    pub name: String,
    pub background: Color,
    pub foreground: Color,
    pub muted: Color,
    pub accent: Color,
    pub border: Color,
    pub selection_bg: Color,
    pub selection_fg: Color,
    pub success: Color,
    pub warning: Color,
    pub error: Color,
    pub train_loss: Color,
    pub train_loss_smooth: Color,
    pub val_loss: Color,
    pub hit: Color,
    pub miss: Color,
}

impl Default for Theme {
    fn default() -> Self {
        Self {
            name: "default".into(),
            background: Color::Reset,
            foreground: Color::Rgb(0xd0, 0xd4, 0xe0),
            muted: Color::Rgb(0x6c, 0x70, 0x86),
            accent: Color::Rgb(0x89, 0xb4, 0xfa),
            border: Color::Rgb(0x45, 0x47, 0x5a),
            selection_bg: Color::Rgb(0x31, 0x32, 0x44),
            selection_fg: Color::Rgb(0xf5, 0xf5, 0xf5),
            success: Color::Rgb(0xa6, 0xe3, 0xa1),
            warning: Color::Rgb(0xf9, 0xe2, 0xaf),
            error: Color::Rgb(0xf3, 0x8b, 0xa8),
            train_loss: Color::Rgb(0x89, 0xb4, 0xfa),
            train_loss_smooth: Color::Rgb(0xcb, 0xa6, 0xf7),
            val_loss: Color::Rgb(0xfa, 0xb3, 0x87),
            hit: Color::Rgb(0xa6, 0xe3, 0xa1),
            miss: Color::Rgb(0xf3, 0x8b, 0xa8),
        }
    }
}

/// `#rrggbb` or one of the ANSI names.
pub fn parse_colour(s: &str) -> Option<Color> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix('#') {
        if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let v = u32::from_str_radix(hex, 16).ok()?;
        return Some(Color::Rgb((v >> 16) as u8, (v >> 8) as u8, v as u8));
    }
    match s.to_ascii_lowercase().as_str() {
        "reset" => Some(Color::Reset),
        "black" => Some(Color::Black),
        "red" => Some(Color::Red),
        "green" => Some(Color::Green),
        "yellow" => Some(Color::Yellow),
        "blue" => Some(Color::Blue),
        "magenta" => Some(Color::Magenta),
        "cyan" => Some(Color::Cyan),
        "gray" | "grey" => Some(Color::Gray),
        "white" => Some(Color::White),
        other => Color::from_str(other).ok().filter(|_| !other.is_empty()),
    }
}

impl Theme {
    /// Names of the compiled-in themes.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(n, _)| *n)
    }

    /// A compiled-in theme.
    pub fn builtin(name: &str) -> Option<Self> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        // The built-ins are checked by a unit test.
        Self::from_toml(text, &format!("themes/{name}.toml")).ok()
    }

    /// Where user themes live: `$XDG_CONFIG_HOME/vitrine/themes` or
    /// `~/.config/vitrine/themes`.
    pub fn user_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })?;
        Some(base.join("vitrine").join("themes"))
    }

    /// Resolves `name`: a path to a `.toml` file, the user's `NAME.toml`, or a built-in.
    pub fn load(name: &str) -> Result<Self, ThemeError> {
        Self::load_from(name, Self::user_dir().as_deref())
    }

    /// [`Self::load`] with an explicit user theme folder.
    pub fn load_from(name: &str, user_dir: Option<&Path>) -> Result<Self, ThemeError> {
        let as_path = Path::new(name);
        let is_file = as_path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        if is_file || name.contains(std::path::MAIN_SEPARATOR) {
            return Self::from_file(as_path);
        }
        if let Some(dir) = user_dir {
            let file = dir.join(format!("{name}.toml"));
            if file.is_file() {
                return Self::from_file(&file);
            }
        }
        Self::builtin(name).ok_or_else(|| ThemeError::Unknown {
            name: name.to_string(),
            dir: user_dir.map_or_else(
                || "~/.config/vitrine/themes".to_string(),
                |d| d.display().to_string(),
            ),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ThemeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ThemeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses a theme file; keys it leaves out keep the default theme's colours.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ThemeError> {
        let file: ThemeFile = toml::from_str(text).map_err(|e| ThemeError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut theme = Theme {
            name: file.name.clone().unwrap_or_else(|| {
                Path::new(origin)
                    .file_stem()
                    .map_or_else(|| origin.to_string(), |s| s.to_string_lossy().into_owned())
            }),
            ..Theme::default()
        };
        let slots: [(&str, &Option<String>, &mut Color); 15] = [
            ("background", &file.background, &mut theme.background),
            ("foreground", &file.foreground, &mut theme.foreground),
            ("muted", &file.muted, &mut theme.muted),
            ("accent", &file.accent, &mut theme.accent),
            ("border", &file.border, &mut theme.border),
            ("selection_bg", &file.selection_bg, &mut theme.selection_bg),
            ("selection_fg", &file.selection_fg, &mut theme.selection_fg),
            ("success", &file.success, &mut theme.success),
            ("warning", &file.warning, &mut theme.warning),
            ("error", &file.error, &mut theme.error),
            ("train_loss", &file.train_loss, &mut theme.train_loss),
            (
                "train_loss_smooth",
                &file.train_loss_smooth,
                &mut theme.train_loss_smooth,
            ),
            ("val_loss", &file.val_loss, &mut theme.val_loss),
            ("hit", &file.hit, &mut theme.hit),
            ("miss", &file.miss, &mut theme.miss),
        ];
        for (key, value, slot) in slots {
            if let Some(v) = value {
                *slot = parse_colour(v).ok_or_else(|| ThemeError::Colour {
                    origin: origin.to_string(),
                    line: crate::config::key_line(text, key),
                    key: key.to_string(),
                    value: v.clone(),
                })?;
            }
        }
        Ok(theme)
    }

    /// Plain text on the theme's background.
    pub fn base(&self) -> Style {
        Style::default().fg(self.foreground).bg(self.background)
    }

    pub fn muted(&self) -> Style {
        Style::default().fg(self.muted)
    }

    pub fn accent(&self) -> Style {
        Style::default().fg(self.accent)
    }

    pub fn title(&self) -> Style {
        Style::default()
            .fg(self.accent)
            .add_modifier(Modifier::BOLD)
    }

    pub fn border(&self) -> Style {
        Style::default().fg(self.border)
    }

    /// The focused block's border.
    pub fn border_focused(&self) -> Style {
        Style::default().fg(self.accent)
    }

    pub fn selected(&self) -> Style {
        Style::default()
            .fg(self.selection_fg)
            .bg(self.selection_bg)
            .add_modifier(Modifier::BOLD)
    }

    pub fn tab_active(&self) -> Style {
        Style::default()
            .fg(self.accent)
            .add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }

    pub fn success(&self) -> Style {
        Style::default().fg(self.success)
    }

    pub fn warning(&self) -> Style {
        Style::default().fg(self.warning)
    }

    pub fn error(&self) -> Style {
        Style::default().fg(self.error).add_modifier(Modifier::BOLD)
    }

    pub fn hit(&self) -> Style {
        Style::default().fg(self.hit).add_modifier(Modifier::BOLD)
    }

    pub fn miss(&self) -> Style {
        Style::default().fg(self.miss)
    }

    pub fn gauge(&self) -> Style {
        Style::default().fg(self.accent).bg(self.selection_bg)
    }

    /// Key names in hints and the help overlay.
    pub fn key(&self) -> Style {
        Style::default()
            .fg(self.warning)
            .add_modifier(Modifier::BOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_set_every_key() {
        for (name, text) in BUILTIN {
            let theme = Theme::from_toml(text, name).expect(name);
            assert_eq!(theme.name, name);
            let table: toml::Table = toml::from_str(text).expect("toml");
            assert_eq!(table.len(), 16, "{name} must set every key");
        }
        assert_eq!(Theme::builtin("default"), Some(Theme::default()));
    }

    #[test]
    fn bad_colour_names_file_line_and_key() {
        let err = Theme::from_toml("name = \"x\"\naccent = \"#12345\"\n", "my.toml")
            .expect_err("bad colour");
        let msg = err.to_string();
        assert!(
            msg.contains("my.toml, line 2") && msg.contains("`accent`"),
            "{msg}"
        );
        let err = Theme::from_toml("accnt = \"red\"\n", "my.toml").expect_err("unknown key");
        assert!(err.to_string().contains("accnt"), "{err}");
    }

    #[test]
    fn user_dir_overrides_builtin_and_missing_keys_keep_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("light.toml"), "accent = \"red\"\n").expect("write");
        let t = Theme::load_from("light", Some(dir.path())).expect("load");
        assert_eq!(t.accent, Color::Red);
        assert_eq!(t.foreground, Theme::default().foreground);
        let t = Theme::load_from("high-contrast", Some(dir.path())).expect("builtin");
        assert_eq!(t.background, Color::Black);
        assert!(Theme::load_from("nope", Some(dir.path())).is_err());
    }
}
