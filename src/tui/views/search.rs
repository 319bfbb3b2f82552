//! The Search tab: test queries (or a typed path), the query thumbnail beside a grid
//! of the top 20 results with rank, cosine score and a hit marker when the result is
//! the query's item; Enter on a result shows it large.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Row, Table, Wrap};

use super::{Ctx, centered, clip, ellipsize, file_label, panel, scroll_offset, thumb};
use crate::tui::app::App;
use crate::tui::tabs::search::{Focus, GRID_COLS, IndexStatus, ModelLoad, TOP_K};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    if app.search.failures.open {
        super::failures::draw(frame, area, app, ctx);
        return;
    }
    let left_w = if area.width >= 120 { 44 } else { 26 };
    let [left, right] =
        Layout::horizontal([Constraint::Length(left_w), Constraint::Min(40)]).areas(area);
    draw_left(frame, left, app, ctx);
    draw_results(frame, right, app, ctx);
    if app.search.detail {
        draw_detail(frame, area, app, ctx);
    }
}

fn draw_left(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let s = &app.search;
    let input_h = if s.input.is_some() { 3 } else { 0 };
    let [input, list, query] = Layout::vertical([
        Constraint::Length(input_h),
        Constraint::Min(5),
        Constraint::Percentage(45),
    ])
    .areas(area);
    if let Some(text) = &s.input {
        let w = input.width.saturating_sub(4) as usize;
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(ellipsize(text, w), theme.base()),
                Span::styled("▏", theme.accent()),
            ]))
            .block(panel("Image path (Enter, Esc)", theme).border_style(theme.border_focused())),
            input,
        );
    }
    let visible = list.height.saturating_sub(2) as usize;
    let offset = scroll_offset(s.selected, visible);
    let name_w = list.width.saturating_sub(4) as usize;
    let rows: Vec<Row> = s
        .queries
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .map(|(i, q)| {
            let style = if i == s.selected {
                if s.focus == Focus::Queries {
                    theme.selected()
                } else {
                    theme.accent()
                }
            } else {
                theme.base()
            };
            Row::new(vec![clip(
                &format!("{:>3} {} {}", i + 1, q.item_id, q.category),
                name_w,
            )])
            .style(style)
        })
        .collect();
    let title = format!("Test queries ({})", s.queries.len());
    let mut block = panel(title, theme);
    if s.focus == Focus::Queries && s.input.is_none() {
        block = block.border_style(theme.border_focused());
    }
    if s.queries.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no test queries (/ types a path)",
                theme.muted(),
            ))
            .wrap(Wrap { trim: true })
            .block(block),
            list,
        );
    } else {
        frame.render_widget(Table::new(rows, [Constraint::Min(1)]).block(block), list);
    }
    let block = panel("Query", theme);
    let inner = block.inner(query);
    frame.render_widget(block, query);
    let shown = s.pending.as_ref().or(s.results.as_ref().map(|r| &r.query));
    if let Some(path) = shown {
        let [pic, caption] =
            Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
        thumb(frame, pic, app, path, ctx);
        let item = s
            .results
            .as_ref()
            .filter(|r| &r.query == path)
            .and_then(|r| r.query_item.clone())
            .map_or_else(|| file_label(path), |i| format!("item {i}"));
        frame.render_widget(
            Paragraph::new(Span::styled(
                ellipsize(&item, inner.width as usize),
                theme.muted(),
            )),
            caption,
        );
    }
}

/// The index and whether the search worker has it (with its model) in memory.
fn index_line(app: &App, ctx: &Ctx) -> Vec<Span<'static>> {
    let theme = ctx.theme;
    if let IndexStatus::Ready { count } = &app.index {
        let count = format!("index: {count} gallery images");
        return match &app.search.model {
            // A search asked meanwhile waits for this load (the query panel shows it).
            ModelLoad::Loading if app.search.pending.is_some() => vec![Span::styled(
                "loading model and index… · the search waits for it",
                theme.warning(),
            )],
            ModelLoad::Loading => vec![
                Span::styled(count, theme.muted()),
                Span::styled(" · loading model and index…", theme.warning()),
            ],
            ModelLoad::Ready { seconds, beam } => vec![
                Span::styled(count, theme.muted()),
                Span::styled(
                    format!(" · ready (loaded in {seconds:.1} s)"),
                    theme.success(),
                ),
                Span::styled(format!(" · {beam}"), theme.muted()),
                Span::styled(
                    format!(" · thumbnails: {}", app.opts.images_label),
                    theme.muted(),
                ),
            ],
            ModelLoad::Failed(e) => vec![
                Span::styled(count, theme.muted()),
                Span::styled(format!(" · cannot load: {e}"), theme.error()),
            ],
            ModelLoad::Idle => vec![Span::styled(
                format!("{count} · thumbnails: {}", app.opts.images_label),
                theme.muted(),
            )],
        };
    }
    vec![match &app.index {
        IndexStatus::Unknown => Span::styled("index: checking…", theme.muted()),
        IndexStatus::Missing => Span::styled("no index yet: press i to build it", theme.warning()),
        IndexStatus::Building { done, total } if *total > 0 => Span::styled(
            format!("building the index: {done}/{total} images"),
            theme.warning(),
        ),
        IndexStatus::Building { .. } => Span::styled("building the index…", theme.warning()),
        IndexStatus::Ready { .. } => Span::raw(""),
        IndexStatus::Failed(e) => Span::styled(format!("index: {e}"), theme.error()),
    }]
}

fn draw_results(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let s = &app.search;
    let title = match &s.results {
        Some(r) => {
            let found = r.first_match().map_or_else(
                || "item not in the top 20".to_string(),
                |k| format!("item found at rank {k}"),
            );
            if r.query_item.is_some() {
                format!("Top {} · {found} · {:.0} ms", r.hits.len(), r.millis)
            } else {
                format!("Top {} · {:.0} ms", r.hits.len(), r.millis)
            }
        }
        None => format!("Top {TOP_K}"),
    };
    let mut block = panel(title, theme);
    if s.focus == Focus::Results {
        block = block.border_style(theme.border_focused());
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [status, grid] = Layout::vertical([Constraint::Length(1), Constraint::Min(4)]).areas(inner);
    let mut line = index_line(app, ctx);
    if let Some(p) = s.pending.as_ref().filter(|_| !s.waiting_for_model()) {
        line.push(Span::styled(
            format!(" · searching {}…", file_label(p)),
            theme.warning(),
        ));
    }
    if let Some(e) = &s.error {
        line.push(Span::styled(format!(" · {e}"), theme.error()));
    }
    frame.render_widget(
        Paragraph::new(Line::from(line)).wrap(Wrap { trim: true }),
        status,
    );
    let Some(results) = &s.results else {
        let hint = if s.queries.is_empty() {
            "type / and an image path, then Enter"
        } else {
            "select a query and press Enter"
        };
        frame.render_widget(
            Paragraph::new(Line::styled(hint, theme.muted())),
            Rect::new(grid.x, grid.y + grid.height / 2, grid.width, 1),
        );
        return;
    };
    let rows_n = TOP_K.div_ceil(GRID_COLS) as u16;
    let row_areas = Layout::vertical(vec![
        Constraint::Ratio(1, u32::from(rows_n));
        rows_n as usize
    ])
    .split(grid);
    for (r, row_area) in row_areas.iter().enumerate() {
        let cells = Layout::horizontal(vec![Constraint::Ratio(1, GRID_COLS as u32); GRID_COLS])
            .split(*row_area);
        for (c, cell) in cells.iter().enumerate() {
            let k = r * GRID_COLS + c;
            let Some(hit) = results.hits.get(k) else {
                continue;
            };
            let cell = Rect::new(cell.x, cell.y, cell.width.saturating_sub(1), cell.height);
            let [caption, pic] =
                Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(cell);
            let selected = s.focus == Focus::Results && s.hit == k;
            let mark = if hit.is_match {
                Span::styled(" ✓", theme.hit())
            } else {
                Span::raw("")
            };
            let style = if selected {
                theme.selected()
            } else {
                theme.base()
            };
            frame.render_widget(
                Paragraph::new(Line::from(vec![
                    Span::styled(format!("#{} {:.3}", hit.rank, hit.score), style),
                    mark,
                ])),
                caption,
            );
            thumb(frame, pic, app, &hit.path, ctx);
        }
    }
}

fn draw_detail(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let s = &app.search;
    let Some(hit) = s.results.as_ref().and_then(|r| r.hits.get(s.hit)) else {
        return;
    };
    let popup = centered(area, area.width * 9 / 10, area.height * 9 / 10);
    frame.render_widget(Clear, popup);
    let block = panel(format!("Result #{}", hit.rank), theme).border_style(theme.border_focused());
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let [pic, info] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Min(20)]).areas(inner);
    thumb(frame, pic, app, &hit.path, ctx);
    let kv = |k: &str, v: String| {
        Line::from(vec![
            Span::styled(format!("{k:<9}"), theme.muted()),
            Span::styled(v, theme.base()),
        ])
    };
    let mut lines = vec![
        kv("rank", hit.rank.to_string()),
        kv("score", format!("{:.4} (cosine)", hit.score)),
        kv("item", hit.item_id.clone()),
        kv("category", hit.category.clone()),
        kv("path", hit.path.display().to_string()),
        Line::raw(""),
    ];
    lines.push(if hit.is_match {
        Line::styled("✓ the query's item", theme.hit())
    } else {
        Line::styled("another item", theme.miss())
    });
    lines.push(Line::raw(""));
    lines.push(Line::styled("Esc or Enter closes", theme.muted()));
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), info);
}
