//! Which graphics protocol the terminal speaks, asked one way for the dashboard and
//! for `vitrine search --show`, and a ratatui buffer printed inline in a shell.
//!
//! Asking means writing queries (kitty graphics, device attributes, cell size, status
//! report) and reading the terminal's replies from stdin. A reply that arrives while
//! the terminal echoes input lands on the screen as text (`^[[?63;…c`) and then in the
//! shell's input, so replies are only ever awaited with echo off, and whatever is left
//! unread is discarded before echo comes back.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ratatui::backend::IntoCrossterm;
use ratatui::buffer::{Buffer, CellDiffOption};
use ratatui::crossterm::style::{
    Attribute, Color as CtColor, SetAttribute, SetBackgroundColor, SetForegroundColor,
};
use ratatui::crossterm::terminal::{disable_raw_mode, enable_raw_mode, is_raw_mode_enabled};
use ratatui::crossterm::{cursor, queue};
use ratatui::style::Color;
use ratatui_image::picker::{Picker, ProtocolType};

use crate::config::ImageMode;

/// ratatui-image gives up on a silent terminal after 2 s; a query that took about that
/// long may still be answered, so the answer is waited for a little before discarding.
const SLOW_QUERY: Duration = Duration::from_millis(1900);
const LATE_REPLY_GRACE: Duration = Duration::from_millis(150);

/// How thumbnails reach this terminal.
pub struct Graphics {
    /// `None` when thumbnails are off.
    pub picker: Option<Picker>,
    /// The protocol's name (`sixel`, `halfblocks`, …, `off`), for logs and the UI.
    pub label: String,
}

/// Whether the terminal can be asked: replies come back on stdin, so both ends must be
/// the terminal (a pipe on either side would lose them or leak the queries).
pub fn can_query() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Chooses how thumbnails are drawn for `mode`: the terminal is asked (when it can be)
/// except for `halfblocks` and `off`, and in tmux under `auto` (tmux passes graphics
/// through unreliably), where half blocks are used. Half blocks too when it does not
/// answer. A forced protocol still asks, for the cell size in pixels.
pub fn detect(mode: ImageMode) -> Graphics {
    let in_tmux = std::env::var_os("TMUX").is_some_and(|v| !v.is_empty());
    let query = || {
        if !can_query() {
            return Picker::halfblocks();
        }
        quietly(|| match Picker::from_query_stdio() {
            Ok(p) => p,
            Err(e) => {
                tracing::info!("terminal graphics query failed ({e}); using half blocks");
                Picker::halfblocks()
            }
        })
    };
    let forced = |t: ProtocolType| {
        let mut p = query();
        p.set_protocol_type(t);
        p
    };
    let picker = match mode {
        ImageMode::Off => None,
        ImageMode::Halfblocks => Some(Picker::halfblocks()),
        ImageMode::Auto if in_tmux => Some(Picker::halfblocks()),
        ImageMode::Auto => Some(query()),
        ImageMode::Kitty => Some(forced(ProtocolType::Kitty)),
        ImageMode::Sixel => Some(forced(ProtocolType::Sixel)),
        ImageMode::Iterm2 => Some(forced(ProtocolType::Iterm2)),
    };
    let label = picker
        .as_ref()
        .map_or_else(|| "off".to_string(), |p| protocol_name(p.protocol_type()));
    Graphics { picker, label }
}

pub fn protocol_name(t: ProtocolType) -> String {
    format!("{t:?}").to_lowercase()
}

/// Runs `ask` (something that writes queries to the terminal and reads its replies)
/// with echo and line editing off, then discards any reply it left unread and restores
/// the terminal as it was, also when `ask` panics. Inside the dashboard (raw mode
/// already on) the mode is left alone.
pub fn quietly<T>(ask: impl FnOnce() -> T) -> T {
    struct Guard {
        was_raw: bool,
        started: Instant,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            if self.started.elapsed() >= SLOW_QUERY {
                // It gave up waiting; a slow terminal may still answer.
                std::thread::sleep(LATE_REPLY_GRACE);
            }
            discard_input();
            if !self.was_raw {
                let _ = disable_raw_mode();
            }
        }
    }
    let was_raw = is_raw_mode_enabled().unwrap_or(false);
    if !was_raw && let Err(e) = enable_raw_mode() {
        tracing::info!("could not switch the terminal to raw mode ({e})");
    }
    let _guard = Guard {
        was_raw,
        started: Instant::now(),
    };
    ask()
}

/// Drops input the terminal sent that nobody read (late replies to a query).
fn discard_input() {
    #[cfg(unix)]
    {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            let _ = rustix::termios::tcflush(&stdin, rustix::termios::QueueSelector::IFlush);
        }
    }
}

/// The terminal's settings, put back when dropped: a query that timed out leaves a
/// reader thread behind that could otherwise switch modes after the command is done.
pub struct TerminalRestore {
    #[cfg(unix)]
    saved: Option<rustix::termios::Termios>,
}

impl TerminalRestore {
    pub fn save() -> Self {
        Self {
            #[cfg(unix)]
            saved: std::io::stdin()
                .is_terminal()
                .then(|| rustix::termios::tcgetattr(std::io::stdin()).ok())
                .flatten(),
        }
    }
}

impl Drop for TerminalRestore {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

/// Prints `buf` (pictures rendered by ratatui-image, or any cells) at the cursor in an
/// ordinary shell and leaves the cursor on the line below it. Room is made first (the
/// screen scrolls up if needed, one spare line so a picture reaching the last line
/// cannot scroll it again), then every run of drawn cells is placed relative to the
/// saved top-left corner: a picture's escape sequence leaves the cursor wherever its
/// terminal likes, and the cells it covers (marked skip) must not be overwritten.
/// Blank cells are not written either.
pub fn write_inline(out: &mut impl Write, buf: &Buffer) -> std::io::Result<()> {
    let area = buf.area;
    let (w, h) = (area.width, area.height);
    if w == 0 || h == 0 {
        return Ok(());
    }
    for _ in 0..=h {
        out.write_all(b"\n")?;
    }
    queue!(out, cursor::MoveUp(h + 1), cursor::SavePosition)?;
    for y in 0..h {
        let mut x = 0;
        while x < w {
            if skipped(buf, area.x + x, area.y + y) {
                x += 1;
                continue;
            }
            queue!(out, cursor::RestorePosition)?;
            if y > 0 {
                queue!(out, cursor::MoveDown(y))?;
            }
            if x > 0 {
                queue!(out, cursor::MoveRight(x))?;
            }
            let mut style: Option<(Color, Color)> = None;
            while x < w && !skipped(buf, area.x + x, area.y + y) {
                let cell = &buf[(area.x + x, area.y + y)];
                if style != Some((cell.fg, cell.bg)) {
                    queue!(
                        out,
                        SetForegroundColor(colour(cell.fg)),
                        SetBackgroundColor(colour(cell.bg))
                    )?;
                    style = Some((cell.fg, cell.bg));
                }
                out.write_all(cell.symbol().as_bytes())?;
                x += 1;
            }
            queue!(out, SetAttribute(Attribute::Reset))?;
        }
    }
    queue!(out, cursor::RestorePosition, cursor::MoveDown(h))?;
    out.write_all(b"\r")?;
    out.flush()
}

/// Cells left as they are: covered by a picture (skip), or blank (the room made for
/// the buffer is blank already, and a space could erase a picture's overhang).
fn skipped(buf: &Buffer, x: u16, y: u16) -> bool {
    let cell = &buf[(x, y)];
    cell.diff_option == CellDiffOption::Skip || (cell.symbol() == " " && cell.bg == Color::Reset)
}

fn colour(c: Color) -> CtColor {
    c.into_crossterm()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::layout::Rect;

    fn inline(buf: &Buffer) -> String {
        let mut out = Vec::new();
        write_inline(&mut out, buf).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn cells_are_placed_from_the_saved_corner_and_the_cursor_ends_below() {
        let mut buf = Buffer::empty(Rect::new(0, 0, 6, 2));
        buf[(0, 0)]
            .set_char('▀')
            .set_fg(Color::Rgb(1, 2, 3))
            .set_bg(Color::Rgb(4, 5, 6));
        buf[(1, 0)]
            .set_char('▀')
            .set_fg(Color::Rgb(1, 2, 3))
            .set_bg(Color::Rgb(4, 5, 6));
        buf[(4, 1)].set_char('x');
        let s = inline(&buf);
        // Room for 2 rows and a spare line, then back up and save the corner.
        assert!(s.starts_with("\n\n\n\x1b[3A\x1b7"), "{s:?}");
        // Row 0 from the corner: one colour change for two cells.
        assert!(
            s.contains("\x1b8\x1b[38;2;1;2;3m\x1b[48;2;4;5;6m▀▀\x1b[0m"),
            "{s:?}"
        );
        assert_eq!(s.matches("38;2;1;2;3").count(), 1);
        // Row 1: down one, right four (blank cells are not written).
        assert!(s.contains("\x1b8\x1b[1B\x1b[4C"), "{s:?}");
        assert!(s.ends_with("\x1b8\x1b[2B\r"), "{s:?}");
        assert!(!s.contains("  "), "blank cells written: {s:?}");
    }

    #[test]
    fn a_picture_is_written_once_and_the_cells_it_covers_are_left_alone() {
        let mut buf = Buffer::empty(Rect::new(0, 0, 8, 3));
        let picture = "\x1bP0;1;0q\"1;1;20;30#0~~\x1b\\";
        buf[(2, 0)].set_symbol(picture);
        for y in 0..3 {
            for x in 2..6 {
                if (x, y) != (2, 0) {
                    buf[(x, y)].set_diff_option(CellDiffOption::Skip);
                }
            }
        }
        buf[(6, 1)].set_char('#');
        let s = inline(&buf);
        assert_eq!(s.matches(picture).count(), 1, "{s:?}");
        assert!(
            s.contains(&format!("\x1b8\x1b[2C\x1b[39m\x1b[49m{picture}")),
            "{s:?}"
        );
        // After the picture the next cell is placed again from the corner.
        assert!(s.contains("\x1b8\x1b[1B\x1b[6C\x1b[39m\x1b[49m#"), "{s:?}");
        assert!(s.ends_with("\x1b8\x1b[3B\r"), "{s:?}");
    }

    #[test]
    fn an_empty_buffer_prints_nothing() {
        assert_eq!(inline(&Buffer::empty(Rect::new(0, 0, 0, 3))), "");
    }

    #[test]
    fn no_graphics_query_without_a_terminal() {
        // Under `cargo test` stdout is captured: never a terminal, so nothing is asked
        // (this would otherwise wait for a reply) and half blocks are chosen.
        if can_query() {
            return;
        }
        let started = Instant::now();
        let g = detect(ImageMode::Auto);
        assert_eq!(g.label, "halfblocks");
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(detect(ImageMode::Off).picker.is_none());
        let forced = detect(ImageMode::Sixel);
        assert_eq!(forced.label, "sixel");
    }
}
