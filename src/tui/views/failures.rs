//! The Search tab's failures view (`f`): the test queries worst first on the left
//! (rank of their item, category, item); on the right the selected query beside its
//! item's best shop image, and the images ranked ahead of it — or, after `c`, top-1 /
//! top-20 per small category, worst first.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, Wrap};

use super::{Ctx, clip, panel, pct, scroll_offset, thumb};
use crate::index::evaluate::FAILURE_SHOWN;
use crate::theme::Theme;
use crate::tui::app::App;
use crate::tui::tabs::dataset::Loadable;
use crate::tui::tabs::failures::{FailureRow, FailuresReport, FailuresStatus, GalleryHit};
use crate::tui::tabs::search::{IndexStatus, ModelLoad, TOP_K};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let wide = area.width >= 120;
    let left_w = if wide { 56 } else { 32 };
    let [left, right] =
        Layout::horizontal([Constraint::Length(left_w), Constraint::Min(40)]).areas(area);
    let f = &app.search.failures;
    let Some(report) = f.report() else {
        draw_waiting(frame, left, right, app, ctx);
        return;
    };
    draw_list(frame, left, app, report, wide, ctx);
    if f.categories {
        draw_categories(frame, right, app, report, wide, ctx);
    } else {
        draw_selected(frame, right, app, report, ctx);
    }
}

/// `#57`, or `—` when the gallery holds no image of the item.
fn rank_label(rank: Option<usize>) -> String {
    rank.map_or_else(|| "—".to_string(), |r| format!("#{r}"))
}

fn rank_style(rank: Option<usize>, theme: &Theme) -> Style {
    match rank {
        Some(1) => theme.hit(),
        Some(r) if r <= TOP_K => theme.base(),
        _ => theme.miss(),
    }
}

/// Before the report: what it waits for.
fn draw_waiting(frame: &mut Frame, left: Rect, right: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let f = &app.search.failures;
    let lines = match (&f.status, &app.index) {
        (FailuresStatus::Failed(e), _) => vec![
            Line::styled("cannot rank the queries:", theme.error()),
            Line::styled(e.clone(), theme.error()),
            Line::raw(""),
            Line::styled("f twice tries again", theme.muted()),
        ],
        (FailuresStatus::Computing { done, total }, _) => {
            let mut l = vec![Line::styled("computing failures…", theme.warning())];
            if app.search.model == ModelLoad::Loading {
                l.push(Line::styled("loading model and index…", theme.muted()));
            } else if *total > 0 {
                l.push(Line::styled(
                    format!("{done}/{total} queries embedded"),
                    theme.muted(),
                ));
            } else {
                l.push(Line::styled("embedding the test queries", theme.muted()));
            }
            l
        }
        (_, IndexStatus::Missing) => {
            vec![Line::styled(
                "no index yet: press i to build it",
                theme.warning(),
            )]
        }
        (_, IndexStatus::Building { .. }) => {
            vec![Line::styled("building the index…", theme.warning())]
        }
        (_, IndexStatus::Failed(e)) => vec![Line::styled(format!("index: {e}"), theme.error())],
        (_, IndexStatus::Unknown) => vec![Line::styled("index: checking…", theme.muted())],
        (_, IndexStatus::Ready { .. }) => match &app.dataset {
            Loadable::Failed(e) => vec![Line::styled(format!("no dataset: {e}"), theme.error())],
            Loadable::Loading => vec![Line::styled("reading the dataset…", theme.muted())],
            Loadable::Ready(_) => vec![Line::styled("no test queries", theme.muted())],
        },
    };
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(panel("Failures", theme).border_style(theme.border_focused())),
        left,
    );
    let explain = vec![
        Line::styled(
            "Every test query ranked against the index's gallery, worst first: where \
             its item's best shop image lands, and the images ranked ahead of it.",
            theme.base(),
        ),
        Line::raw(""),
        Line::from(vec![
            Span::styled("c", theme.key()),
            Span::styled(" per small category  ", theme.muted()),
            Span::styled("Enter", theme.key()),
            Span::styled(" search it  ", theme.muted()),
            Span::styled("Esc", theme.key()),
            Span::styled(" back", theme.muted()),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(explain)
            .wrap(Wrap { trim: true })
            .block(panel("Failures view", theme)),
        right,
    );
}

fn draw_list(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    report: &FailuresReport,
    wide: bool,
    ctx: &Ctx,
) {
    let theme = ctx.theme;
    let f = &app.search.failures;
    let visible = area.height.saturating_sub(2) as usize;
    let offset = scroll_offset(f.selected, visible);
    let w = area.width.saturating_sub(2) as usize;
    let rows: Vec<Row> = report
        .rows
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .map(|(i, r)| {
            let q = &r.query;
            let text = if wide {
                format!(
                    "{:<24} {}",
                    clip(&format!("{}/{}", q.big, q.category), 24),
                    q.item_id
                )
            } else {
                format!("{} {}", q.category, q.item_id)
            };
            let (rank_s, text_s) = if i == f.selected {
                let s = if f.categories {
                    theme.accent()
                } else {
                    theme.selected()
                };
                (s, s)
            } else {
                (rank_style(r.rank, theme), theme.base())
            };
            Row::new(vec![
                Span::styled(format!("{:>6}", rank_label(r.rank)), rank_s),
                Span::styled(clip(&text, w.saturating_sub(7)), text_s),
            ])
        })
        .collect();
    let title = format!("Failures, worst first ({})", report.rows.len());
    let mut block = panel(title, theme);
    if !f.categories {
        block = block.border_style(theme.border_focused());
    }
    frame.render_widget(
        Table::new(rows, [Constraint::Length(6), Constraint::Min(1)]).block(block),
        area,
    );
}

/// `30 queries: top-1 40.0% · top-20 80.0% · vs 146 gallery images`, cut to `width`
/// (the gallery size goes first).
fn summary(report: &FailuresReport, width: u16, theme: &Theme) -> Line<'static> {
    let mut spans = vec![
        Span::styled(format!("{} queries: ", report.rows.len()), theme.muted()),
        Span::styled(
            format!(
                "top-1 {} · top-{TOP_K} {}",
                pct(report.top(1)),
                pct(report.top(TOP_K))
            ),
            theme.accent(),
        ),
    ];
    if report.unreadable > 0 {
        spans.push(Span::styled(
            format!(" · {} unreadable", report.unreadable),
            theme.warning(),
        ));
    }
    let gallery = format!(" · vs {} gallery images", report.gallery);
    if Line::from(spans.clone()).width() + gallery.chars().count() <= width as usize {
        spans.push(Span::styled(gallery, theme.muted()));
    }
    Line::from(spans)
}

fn draw_selected(frame: &mut Frame, area: Rect, app: &App, report: &FailuresReport, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let row = app.search.failures.selected_row();
    let title = row.map_or_else(
        || "No query".to_string(),
        |r| match r.rank {
            Some(1) => "Rank 1: its item comes first".to_string(),
            Some(k) if k <= TOP_K => format!("Rank {k}"),
            Some(k) => format!("Rank {k}: not in the top {TOP_K}"),
            None => "No shop image of its item in the gallery".to_string(),
        },
    );
    let block = panel(title, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [status, pair, ahead] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(50),
        Constraint::Min(4),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(summary(report, status.width, theme)), status);
    let Some(row) = row else {
        return;
    };
    let halves = Layout::horizontal([Constraint::Ratio(1, 2); 2]).split(pair);
    let q = &row.query;
    picture(
        frame,
        halves[0],
        app,
        &q.path,
        vec![
            Span::styled("query ", theme.muted()),
            Span::styled(q.item_id.clone(), theme.base()),
            Span::styled(format!(" {}/{}", q.big, q.category), theme.accent()),
        ],
        ctx,
    );
    match &row.true_hit {
        Some(t) => picture(
            frame,
            halves[1],
            app,
            &t.path,
            vec![
                Span::styled("its item ", theme.muted()),
                Span::styled(format!("#{}", t.rank), rank_style(Some(t.rank), theme)),
                Span::styled(format!(" {:.3}", t.score), theme.base()),
            ],
            ctx,
        ),
        None => frame.render_widget(
            Paragraph::new(Line::styled(
                format!("no shop image of {} in the gallery", q.item_id),
                theme.miss(),
            ))
            .wrap(Wrap { trim: true }),
            halves[1],
        ),
    }
    draw_ahead(frame, ahead, app, row, ctx);
}

/// A picture with a one-line caption under it.
fn picture(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    path: &std::path::Path,
    caption: Vec<Span<'static>>,
    ctx: &mut Ctx,
) {
    let area = Rect::new(area.x, area.y, area.width.saturating_sub(1), area.height);
    let [pic, line] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(area);
    thumb(frame, pic, app, path, ctx);
    let text: String = caption.iter().map(|s| s.content.as_ref()).collect();
    let caption = if text.chars().count() > line.width as usize {
        Line::styled(clip(&text, line.width as usize), ctx.theme.base())
    } else {
        Line::from(caption)
    };
    frame.render_widget(Paragraph::new(caption), line);
}

fn draw_ahead(frame: &mut Frame, area: Rect, app: &App, row: &FailureRow, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let [label, cells_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(2)]).areas(area);
    let text = match row.rank {
        Some(1) => "nothing ranked ahead of it".to_string(),
        Some(k) if k - 1 > FAILURE_SHOWN => {
            format!("ranked ahead of it: the first {FAILURE_SHOWN} of {}", k - 1)
        }
        Some(_) => "ranked ahead of it".to_string(),
        None => format!("the first {FAILURE_SHOWN} results"),
    };
    frame.render_widget(Paragraph::new(Line::styled(text, theme.muted())), label);
    let cells = Layout::horizontal(vec![
        Constraint::Ratio(1, FAILURE_SHOWN as u32);
        FAILURE_SHOWN
    ])
    .split(cells_area);
    for (hit, cell) in row.ahead.iter().zip(cells.iter()) {
        draw_hit(frame, *cell, app, hit, ctx);
    }
}

fn draw_hit(frame: &mut Frame, cell: Rect, app: &App, hit: &GalleryHit, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let cell = Rect::new(cell.x, cell.y, cell.width.saturating_sub(1), cell.height);
    let [caption, pic] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(cell);
    frame.render_widget(
        Paragraph::new(Line::styled(
            clip(
                &format!("#{} {:.3}", hit.rank, hit.score),
                caption.width as usize,
            ),
            theme.base(),
        )),
        caption,
    );
    thumb(frame, pic, app, &hit.path, ctx);
}

fn draw_categories(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    report: &FailuresReport,
    wide: bool,
    ctx: &Ctx,
) {
    let theme = ctx.theme;
    let cats = &report.categories;
    let f = &app.search.failures;
    let visible = area.height.saturating_sub(4) as usize;
    // The window follows the selected row, as in the list.
    let first = scroll_offset(f.category, visible);
    let shown = cats.len().saturating_sub(first).min(visible);
    let head = if wide {
        format!("Per small category, worst top-{TOP_K} first")
    } else {
        "Per category, worst first".to_string()
    };
    let title = match (cats.len() > shown, wide) {
        (true, true) => format!(
            "{head} · {}–{} of {} (j/k move)",
            first + 1,
            first + shown,
            cats.len()
        ),
        (true, false) => format!("{head} · {}–{} of {}", first + 1, first + shown, cats.len()),
        (false, _) => format!("{head} ({})", cats.len()),
    };
    let bar_w = if wide { 20 } else { 0 };
    let name_w = area
        .width
        .saturating_sub(2 + 8 + 7 + 7 + bar_w + 4)
        .clamp(8, 36) as usize;
    let rows: Vec<Row> = cats
        .iter()
        .skip(first)
        .take(shown)
        .enumerate()
        .map(|(i, c)| {
            let name_style = if first + i == f.category {
                theme.selected()
            } else {
                theme.base()
            };
            let mut cells = vec![
                Span::styled(clip(&c.category, name_w), name_style),
                Span::styled(format!("{:>7}", c.queries), theme.muted()),
                Span::styled(format!("{:>6}", pct(c.top1)), theme.base()),
                Span::styled(format!("{:>6}", pct(c.top20)), theme.accent()),
            ];
            if wide {
                let filled = (c.top20 * f64::from(bar_w)).round() as usize;
                cells.push(Span::styled(
                    format!(
                        "{}{}",
                        "█".repeat(filled),
                        "░".repeat(bar_w as usize - filled.min(bar_w as usize))
                    ),
                    theme.gauge(),
                ));
            }
            Row::new(cells)
        })
        .collect();
    let mut header = vec![
        "category".to_string(),
        "queries".to_string(),
        " top-1".to_string(),
        format!("top-{TOP_K}"),
    ];
    let mut widths = vec![
        Constraint::Length(name_w as u16),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    if wide {
        header.push(String::new());
        widths.push(Constraint::Length(bar_w));
    }
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(theme.title()))
            .column_spacing(1)
            .block(panel(title, theme).border_style(theme.border_focused())),
        area,
    );
}
