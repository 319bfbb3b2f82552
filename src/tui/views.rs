//! Drawing: every view reads `&App` and the theme and writes into the frame; nothing
//! here changes state. Thumbnails a view wanted but that are not decoded yet are
//! collected in [`Frame`]-independent order so the runtime can ask a worker for them.

pub mod dataset;
pub mod failures;
pub mod help;
pub mod runs;
pub mod search;
pub mod train;
pub mod triplets;

use std::path::Path;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, BorderType, Borders, Clear, Paragraph, Tabs, Wrap};

use super::app::{App, Tab};
use super::thumb_cache::{ThumbKey, ThumbSlot};
use crate::run::folder::ControlRequest;
use crate::theme::Theme;
use crate::tui::tabs::train::{Outcome, Phase};

/// Smallest terminal the dashboard lays out.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

/// What a frame needs besides the state: the theme, and where thumbnails it could
/// not draw yet are noted.
pub struct Ctx<'a> {
    pub theme: &'a Theme,
    pub wanted: Vec<ThumbKey>,
}

/// Draws the whole screen; returns the thumbnails it wanted.
pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) -> Vec<ThumbKey> {
    let mut ctx = Ctx {
        theme,
        wanted: Vec::new(),
    };
    let area = frame.area();
    frame.render_widget(Block::default().style(theme.base()), area);
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(frame, area, theme);
        return Vec::new();
    }
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, app, theme);
    match app.tab {
        Tab::Train => train::draw(frame, body, app, &mut ctx),
        Tab::Dataset => dataset::draw(frame, body, app, &mut ctx),
        Tab::Triplets => triplets::draw(frame, body, app, &mut ctx),
        Tab::Search => search::draw(frame, body, app, &mut ctx),
        Tab::Runs => runs::draw(frame, body, app, &mut ctx),
    }
    draw_footer(frame, footer, app, theme);
    if app.help {
        help::draw(frame, area, theme);
    }
    if app.quit_prompt {
        draw_quit_prompt(frame, area, app, theme);
    }
    ctx.wanted
}

fn too_small(frame: &mut Frame, area: Rect, theme: &Theme) {
    let text = vec![
        Line::styled("Please enlarge the terminal", theme.warning()),
        Line::raw(format!(
            "vitrine needs {MIN_WIDTH}×{MIN_HEIGHT}; this one is {}×{}",
            area.width, area.height
        )),
        Line::styled("q quits", theme.muted()),
    ];
    let h = (text.len() as u16).min(area.height);
    let y = area.y + area.height.saturating_sub(h) / 2;
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true })
            .style(theme.base()),
        Rect::new(area.x, y, area.width, h),
    );
}

/// The trainer's state in a few words.
pub fn trainer_label(app: &App) -> String {
    let t = &app.trainer;
    if let Some(pid) = t.pid {
        let what = match t.control {
            ControlRequest::Pause => "paused",
            ControlRequest::Stop => "stopping",
            ControlRequest::Run => "training",
        };
        return format!("{what} · pid {pid}");
    }
    if t.starting {
        return "starting…".to_string();
    }
    match (&app.train.outcome, app.train.phase()) {
        (Some(Outcome::Done { reason, .. }), _) => reason.describe(),
        (_, Phase::Failed) => "failed",
        (_, Phase::Idle) => "not started",
        _ => "not running",
    }
    .to_string()
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let label = trainer_label(app);
    let run = app.opts.run.file_name().map_or_else(
        || app.opts.run.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut right = vec![
        Span::styled("run ", theme.muted()),
        Span::styled(run, theme.accent()),
        Span::styled(" · ", theme.muted()),
        Span::styled(
            label,
            if app.trainer.running() {
                theme.success()
            } else {
                theme.muted()
            },
        ),
    ];
    if app.opts.read_only {
        right.push(Span::styled(" · read-only", theme.warning()));
    }
    // The tabs come first: on a narrow terminal the run's name loses its "run " label,
    // then the label is cut.
    let tabs_w = Tab::ALL
        .iter()
        .map(|t| t.title().chars().count() as u16 + 3)
        .sum::<u16>()
        .saturating_sub(1);
    let room = area.width.saturating_sub(9 + tabs_w);
    let mut right = Line::from(right);
    if right.width() as u16 + 1 > room {
        right.spans.remove(0);
    }
    let right_w = (right.width() as u16 + 1)
        .min(area.width / 2)
        .min(room.max(area.width / 4));
    let [left, right_area] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(right_w)]).areas(area);
    let tabs = Tabs::new(Tab::ALL.iter().map(|t| t.title()))
        .select(app.tab.index())
        .style(theme.muted())
        .highlight_style(theme.tab_active())
        .divider(Span::styled("│", theme.border()))
        .padding(" ", " ");
    let [brand, tabs_area] =
        Layout::horizontal([Constraint::Length(9), Constraint::Min(0)]).areas(left);
    frame.render_widget(
        Paragraph::new(Span::styled(" vitrine ", theme.title())),
        brand,
    );
    frame.render_widget(tabs, tabs_area);
    frame.render_widget(
        Paragraph::new(right).alignment(Alignment::Right),
        right_area,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let line = if let Some(msg) = &app.status {
        Line::from(vec![
            Span::styled(" ", theme.muted()),
            Span::styled(msg.clone(), theme.accent()),
        ])
    } else {
        let hints: &[(&str, &str)] = match app.tab {
            Tab::Train => &[
                ("t", "train"),
                ("p", "pause"),
                ("s", "stop"),
                ("i", "index"),
                ("h", "history"),
            ],
            Tab::Dataset => &[("t", "train"), ("i", "index")],
            Tab::Triplets => &[("j/k", "move"), ("f", "filter"), ("o", "hardest")],
            Tab::Search if app.search.failures.open => &[
                ("j/k", "move"),
                ("Enter", "search it"),
                ("c", "categories"),
                ("Esc", "back"),
            ],
            Tab::Search => &[
                ("Enter", "search"),
                ("/", "path"),
                ("arrows", "move"),
                ("f", "failures"),
                ("Esc", "back"),
            ],
            Tab::Runs => &[
                ("j/k", "select"),
                ("Enter", "open"),
                ("Space", "mark"),
                ("d", "diff"),
                ("Esc", "close"),
            ],
        };
        key_hints(hints, theme)
    };
    let [left, right] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(22)]).areas(area);
    frame.render_widget(Paragraph::new(line), left);
    frame.render_widget(
        Paragraph::new(key_hints(&[("?", "help"), ("q", "quit")], theme))
            .alignment(Alignment::Right),
        right,
    );
}

/// ` t train  p pause …`
pub fn key_hints<'a>(hints: &[(&'a str, &'a str)], theme: &Theme) -> Line<'a> {
    let mut spans = Vec::new();
    for (k, what) in hints {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(*k, theme.key()));
        spans.push(Span::styled(format!(" {what} "), theme.muted()));
    }
    Line::from(spans)
}

fn draw_quit_prompt(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let pid = app
        .trainer
        .pid
        .map_or_else(String::new, |p| format!(" (pid {p})"));
    let text = vec![
        Line::raw(format!("Training{pid} is running in its own process.")),
        Line::raw(""),
        Line::from(vec![
            Span::styled(" s ", theme.key()),
            Span::raw("stop training (checkpoint first), then quit"),
        ]),
        Line::from(vec![
            Span::styled(" l ", theme.key()),
            Span::raw("leave it running and quit (reattach: vitrine)"),
        ]),
        Line::from(vec![Span::styled(" Esc ", theme.key()), Span::raw("stay")]),
    ];
    let popup = centered(area, 60, 9);
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text).style(theme.base()).block(
            panel("Stop training or leave it running?", theme).border_style(theme.border_focused()),
        ),
        popup,
    );
}

/// A bordered block with a title.
/// A chart axis over `bounds`, labelled at both ends, in the muted style.
pub fn axis<'a>(theme: &Theme, bounds: [f64; 2], labels: [String; 2]) -> Axis<'a> {
    Axis::default()
        .style(theme.muted())
        .bounds(bounds)
        .labels(labels)
}

pub fn panel<'a>(title: impl Into<Line<'a>>, theme: &Theme) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_type(BorderType::Rounded)
        .border_style(theme.border())
        .title(Span::styled(
            format!(" {} ", Into::<Line>::into(title)),
            theme.title(),
        ))
        .style(theme.base())
}

/// A `w`×`h` rectangle in the middle of `area` (clamped to it).
/// First row of a list window of `visible` rows that keeps `selected` in view (the
/// window scrolls only once the selection passes its last row).
pub fn scroll_offset(selected: usize, visible: usize) -> usize {
    (selected + 1).saturating_sub(visible.max(1))
}

pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// Draws the thumbnail of `path` fitted into `area`, or a placeholder (and notes it
/// as wanted) while it is being decoded.
pub fn thumb(frame: &mut Frame, area: Rect, app: &App, path: &Path, ctx: &mut Ctx) {
    if area.width < 2 || area.height < 1 {
        return;
    }
    let theme = ctx.theme;
    if !app.opts.images {
        placeholder(frame, area, &file_label(path), theme.muted());
        return;
    }
    let key = ThumbKey {
        path: path.to_path_buf(),
        cols: area.width,
        rows: area.height,
    };
    match app.thumb(&key) {
        Some(ThumbSlot::Ready(t)) => {
            let size = t.0.size();
            let w = size.width.min(area.width);
            let h = size.height.min(area.height);
            let at = Rect::new(
                area.x + (area.width - w) / 2,
                area.y + (area.height - h) / 2,
                w,
                h,
            );
            frame.render_widget(ratatui_image::Image::new(&t.0), at);
        }
        Some(ThumbSlot::Failed(_)) => placeholder(frame, area, "unreadable", theme.error()),
        Some(ThumbSlot::Loading) => placeholder(frame, area, "…", theme.muted()),
        None => {
            placeholder(frame, area, "…", theme.muted());
            ctx.wanted.push(key);
        }
    }
}

fn placeholder(frame: &mut Frame, area: Rect, text: &str, style: Style) {
    let y = area.y + area.height.saturating_sub(1) / 2;
    frame.render_widget(
        Paragraph::new(Span::styled(ellipsize(text, area.width as usize), style))
            .alignment(Alignment::Center),
        Rect::new(area.x, y, area.width, 1),
    );
}

/// `id_00000123/shop_01.jpg` — the last two parts of a path.
pub fn file_label(path: &Path) -> String {
    let parts: Vec<String> = path
        .iter()
        .rev()
        .take(2)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// `s` cut to `w` characters with an ellipsis.
pub fn ellipsize(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let tail: String = s.chars().skip(n - (w - 1)).collect();
    format!("…{tail}")
}

/// `s` cut to `w` characters, keeping its start.
pub fn clip(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let head: String = s.chars().take(w.saturating_sub(1)).collect();
    format!("{head}…")
}

/// `12.3%`; `—` for a figure that was not measured (NaN: no val split).
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "—".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_window_scrolls_only_past_its_last_row() {
        assert_eq!(scroll_offset(0, 5), 0);
        assert_eq!(scroll_offset(4, 5), 0);
        assert_eq!(scroll_offset(5, 5), 1);
        assert_eq!(scroll_offset(9, 5), 5);
        assert_eq!(scroll_offset(3, 0), 3);
    }
}
