//! The `?` overlay: every key, from the keymap's own list.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::{Clear, Row, Table};

use super::{centered, panel};
use crate::theme::Theme;
use crate::tui::keymap::KEYS;

pub fn draw(frame: &mut Frame, area: Rect, theme: &Theme) {
    let h = (KEYS.len() as u16 + 3).min(area.height);
    let popup = centered(area, 80.min(area.width), h);
    frame.render_widget(Clear, popup);
    let rows: Vec<Row> = KEYS
        .iter()
        .map(|(k, w, what)| {
            Row::new(vec![
                ratatui::text::Span::styled(*k, theme.key()),
                ratatui::text::Span::styled(*w, theme.muted()),
                ratatui::text::Span::styled(*what, theme.base()),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(14),
                Constraint::Length(16),
                Constraint::Min(20),
            ],
        )
        .header(Row::new(vec!["key", "where", "what"]).style(theme.title()))
        .block(panel("Keys (Esc or ? closes)", theme).border_style(theme.border_focused())),
        popup,
    );
}
