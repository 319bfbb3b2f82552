//! The Runs tab: the runs folder as a table (status coloured, marked runs with
//! their colour), the marked runs' smoothed loss curves overlaid in one chart with a
//! legend, their val top-20 per epoch beside it, and the config diff as a popup.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Chart, Clear, Dataset, GraphType, LegendPosition, Paragraph, Row, Table, Wrap,
};

use super::{Ctx, axis, centered, clip, panel, pct, scroll_offset};
use crate::config::PlotMarker;
use crate::printable::{ago, duration, escape_controls};
use crate::theme::Theme;
use crate::train::runs::{RunStatus, RunSummary};
use crate::tui::app::App;
use crate::tui::tabs::runs::{DiffView, RunEntry, same_run};

/// The colour of the `i`-th marked run, from the theme's chart and state colours.
pub fn run_colour(theme: &Theme, i: usize) -> Color {
    let palette = [
        theme.train_loss,
        theme.val_loss,
        theme.success,
        theme.warning,
        theme.accent,
        theme.error,
        theme.train_loss_smooth,
        theme.hit,
    ];
    palette[i % palette.len()]
}

fn status_style(theme: &Theme, s: RunStatus) -> Style {
    match s {
        RunStatus::Training => theme.success(),
        RunStatus::Paused => theme.warning(),
        RunStatus::Finished => theme.accent(),
        RunStatus::Failed | RunStatus::Unreadable => theme.error(),
        RunStatus::Interrupted | RunStatus::New => theme.muted(),
    }
}

fn loss_label(s: &RunSummary) -> String {
    if s.loss == "triplet" && !s.mining.is_empty() {
        format!("triplet/{}", shown(&s.mining))
    } else {
        shown(&s.loss)
    }
}

/// Text from a run's files as drawn: control characters escaped (ratatui would drop
/// them silently; escaped, a crafted name shows what it holds).
fn shown(s: &str) -> String {
    escape_controls(s).into_owned()
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let r = &app.runs;
    let title = format!("Runs in {}", shown(&r.dir.display().to_string()));
    let message = if let Some(e) = &r.error {
        Some(Line::styled(e.clone(), theme.error()))
    } else if !r.loaded {
        Some(Line::styled("reading the runs folder…", theme.muted()))
    } else if r.runs.is_empty() {
        Some(Line::styled(
            "no runs here yet (a run folder has metrics.jsonl or config.toml)",
            theme.muted(),
        ))
    } else {
        None
    };
    if let Some(msg) = message {
        frame.render_widget(
            Paragraph::new(msg)
                .wrap(Wrap { trim: true })
                .block(panel(title, theme)),
            area,
        );
        return;
    }
    let table_h = (r.runs.len() as u16 + 3).clamp(4, (area.height / 2).max(4));
    let [table, charts] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(0)]).areas(area);
    draw_table(frame, table, app, title, theme);
    let [loss, val] =
        Layout::horizontal([Constraint::Percentage(64), Constraint::Percentage(36)]).areas(charts);
    draw_loss(frame, loss, app, theme);
    draw_val(frame, val, app, theme);
    if let Some(d) = &r.diff {
        draw_diff(frame, area, d, theme);
    }
}

fn draw_table(frame: &mut Frame, area: Rect, app: &App, title: String, theme: &Theme) {
    let r = &app.runs;
    let wide = area.width >= 120;
    let visible = area.height.saturating_sub(3) as usize;
    let offset = scroll_offset(r.selected, visible);
    let rows: Vec<Row> = r
        .runs
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .map(|(i, e)| {
            let s = &e.summary;
            let mark = r.mark_of(&s.path).map_or_else(
                || Span::raw(" "),
                |m| Span::styled("●", Style::default().fg(run_colour(theme, m))),
            );
            let steps = if s.total_steps > 0 {
                format!("{}/{}", s.step, s.total_steps)
            } else {
                s.step.to_string()
            };
            let top = |v: Option<f64>| v.map_or_else(|| "—".to_string(), pct);
            let mut cells: Vec<Line> = vec![
                Line::from(mark),
                // The run the other tabs show.
                if same_run(&s.path, &app.opts.run) {
                    Line::styled(shown(&s.name), theme.accent())
                } else {
                    Line::raw(shown(&s.name))
                },
                Line::styled(s.status.name(), status_style(theme, s.status)),
            ];
            if wide {
                cells.extend([
                    Line::raw(shown(&s.backbone)),
                    Line::raw(if s.image_size > 0 {
                        s.image_size.to_string()
                    } else {
                        "—".into()
                    }),
                    Line::raw(shown(&s.loss)),
                    Line::raw(if s.loss == "triplet" {
                        shown(&s.mining)
                    } else {
                        "—".into()
                    }),
                ]);
            } else {
                let model = if s.image_size > 0 {
                    format!("{}@{}", shown(&s.backbone), s.image_size)
                } else {
                    shown(&s.backbone)
                };
                cells.extend([Line::raw(model), Line::raw(clip(&loss_label(s), 10))]);
            }
            cells.extend([
                Line::raw(steps),
                Line::raw(top(s.best_val_top1)),
                Line::raw(top(s.best_val_top20)),
                Line::raw(if s.seconds.is_finite() && s.seconds > 0.0 {
                    duration(s.seconds)
                } else {
                    "—".into()
                }),
            ]);
            if wide {
                cells.push(Line::raw(ago(s.updated, r.listed_at)));
            }
            let row = Row::new(cells);
            if i == r.selected {
                row.style(theme.selected())
            } else {
                row
            }
        })
        .collect();
    let (header, widths): (Vec<&str>, Vec<Constraint>) = if wide {
        (
            vec![
                "", "run", "status", "backbone", "size", "loss", "miner", "steps", "top-1",
                "top-20", "time", "updated",
            ],
            vec![
                Constraint::Length(1),
                Constraint::Min(10),
                Constraint::Length(11),
                Constraint::Length(10),
                Constraint::Length(4),
                Constraint::Length(16),
                Constraint::Length(12),
                Constraint::Length(11),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(8),
            ],
        )
    } else {
        (
            vec![
                "", "run", "status", "model", "loss", "steps", "top-1", "top-20", "time",
            ],
            vec![
                Constraint::Length(1),
                Constraint::Min(6),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
            ],
        )
    };
    let mut block = panel(title, theme);
    if let Some(detail) = r.selected_run().map(|e| detail(&e.summary, theme)) {
        block = block.title_bottom(detail);
    }
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(theme.title()))
            .block(block),
        area,
    );
}

/// The selected run under the table: its folder, its trainer, why it failed.
fn detail<'a>(s: &RunSummary, theme: &Theme) -> Line<'a> {
    let mut spans = vec![Span::styled(
        format!(" {}", shown(&s.path.display().to_string())),
        theme.muted(),
    )];
    if let Some(pid) = s.pid {
        spans.push(Span::styled(format!(" · pid {pid}"), theme.success()));
    }
    if let Some(m) = &s.message {
        spans.push(Span::styled(
            format!(" · {}", clip(&shown(m), 60)),
            theme.error(),
        ));
    }
    spans.push(Span::raw(" "));
    Line::from(spans)
}

fn marker(app: &App) -> Marker {
    match app.opts.plot_marker {
        PlotMarker::Braille => Marker::Braille,
        PlotMarker::Ascii => Marker::Dot,
    }
}

/// `(lo, hi)` of the finite values, padded; `None` when there are none.
fn y_bounds<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> Option<(f64, f64)> {
    let (lo, hi) = points
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    Some((lo - pad, hi + pad))
}

fn empty_chart(frame: &mut Frame, area: Rect, title: &str, msg: &str, theme: &Theme) {
    let block = panel(title.to_string(), theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let y = inner.y + inner.height.saturating_sub(1) / 2;
    frame.render_widget(
        Paragraph::new(Line::styled(msg.to_string(), theme.muted()))
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        Rect::new(inner.x, y, inner.width, inner.height.min(2)),
    );
}

fn draw_loss(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let charted = app.runs.charted();
    let title = if app.runs.marked.is_empty() {
        "Loss (smoothed) · the selected run · Space marks runs to compare"
    } else {
        "Loss (smoothed) · marked runs"
    };
    let curves: Vec<&(usize, &RunEntry)> = charted
        .iter()
        .filter(|(_, e)| !e.curves.loss.is_empty())
        .collect();
    let Some((y0, y1)) = y_bounds(curves.iter().flat_map(|(_, e)| e.curves.loss.iter())) else {
        empty_chart(frame, area, title, "no steps yet", theme);
        return;
    };
    let x0 = curves
        .iter()
        .filter_map(|(_, e)| e.curves.loss.first().map(|p| p.0))
        .fold(f64::INFINITY, f64::min);
    let x1 = curves
        .iter()
        .filter_map(|(_, e)| e.curves.loss.last().map(|p| p.0))
        .fold(f64::NEG_INFINITY, f64::max)
        .max(x0 + 1.0);
    let y0 = y0.max(0.0).min(y1);
    let datasets: Vec<Dataset> = curves
        .iter()
        .map(|(i, e)| {
            Dataset::default()
                .name(shown(&e.summary.name))
                .marker(marker(app))
                .graph_type(GraphType::Line)
                .style(Style::default().fg(run_colour(theme, *i)))
                .data(&e.curves.loss)
        })
        .collect();
    let chart = Chart::new(datasets)
        .block(panel(title, theme))
        .style(theme.base())
        .legend_position(Some(LegendPosition::TopRight))
        .hidden_legend_constraints((Constraint::Percentage(70), Constraint::Percentage(70)))
        .x_axis(axis(
            theme,
            [x0, x1],
            [format!("{x0:.0}"), format!("step {x1:.0}")],
        ))
        .y_axis(axis(
            theme,
            [y0, y1],
            [format!("{y0:.2}"), format!("{y1:.2}")],
        ));
    frame.render_widget(chart, area);
}

fn draw_val(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let charted = app.runs.charted();
    let title = "Val top-20 per epoch";
    let curves: Vec<&(usize, &RunEntry)> = charted
        .iter()
        .filter(|(_, e)| !e.curves.val_top20.is_empty())
        .collect();
    if curves.is_empty() {
        empty_chart(frame, area, title, "no validation yet", theme);
        return;
    }
    let x1 = curves
        .iter()
        .flat_map(|(_, e)| e.curves.val_top20.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let (lo, hi) =
        y_bounds(curves.iter().flat_map(|(_, e)| e.curves.val_top20.iter())).unwrap_or((0.0, 1.0));
    let (y0, y1) = (lo.max(0.0), hi.min(1.0).max(lo.max(0.0) + 0.01));
    let datasets: Vec<Dataset> = curves
        .iter()
        .map(|(i, e)| {
            Dataset::default()
                .marker(marker(app))
                .graph_type(GraphType::Line)
                .style(Style::default().fg(run_colour(theme, *i)))
                .data(&e.curves.val_top20)
        })
        .collect();
    let chart = Chart::new(datasets)
        .block(panel(title, theme))
        .style(theme.base())
        .x_axis(axis(
            theme,
            [0.0, x1],
            ["0".to_string(), format!("epoch {x1:.0}")],
        ))
        .y_axis(axis(theme, [y0, y1], [pct(y0), pct(y1)]));
    frame.render_widget(chart, area);
}

fn draw_diff(frame: &mut Frame, area: Rect, d: &DiffView, theme: &Theme) {
    let title = format!(
        "Config diff · {} vs {} (Esc closes)",
        shown(&d.a),
        shown(&d.b)
    );
    let w = area.width.saturating_sub(4).min(110);
    let block = panel(title, theme).border_style(theme.border_focused());
    let rows = match &d.rows {
        Some(Ok(rows)) if !rows.is_empty() => rows,
        other => {
            let msg = match other {
                Some(Err(e)) => Line::styled(e.clone(), theme.error()),
                None => Line::styled("reading the two configs…", theme.muted()),
                Some(Ok(_)) => Line::styled("the two configs are the same", theme.muted()),
            };
            let popup = centered(area, w, 5);
            frame.render_widget(Clear, popup);
            frame.render_widget(
                Paragraph::new(msg).wrap(Wrap { trim: true }).block(block),
                popup,
            );
            return;
        }
    };
    let h = (rows.len() as u16 + 3).min(area.height.saturating_sub(2));
    let popup = centered(area, w, h);
    let key_w = rows
        .iter()
        .map(|r| r.key.chars().count())
        .max()
        .unwrap_or(3)
        .clamp(3, 32) as u16;
    let value = |v: &Option<String>| {
        v.as_ref().map_or_else(
            || Line::styled("(absent)", theme.muted()),
            |v| Line::raw(v.clone()),
        )
    };
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            Row::new(vec![
                Line::styled(r.key.clone(), theme.key()),
                value(&r.a),
                value(&r.b),
            ])
        })
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Table::new(
            table_rows,
            [
                Constraint::Length(key_w),
                Constraint::Fill(1),
                Constraint::Fill(1),
            ],
        )
        .header(Row::new(vec!["key".to_string(), shown(&d.a), shown(&d.b)]).style(theme.title()))
        .block(block),
        popup,
    );
}
