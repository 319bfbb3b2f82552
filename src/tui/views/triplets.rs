//! The Triplets tab: the sampler's training triplets, anchor / positive / negative
//! thumbnails side by side with their items and categories, and d(a,p), d(a,n) and
//! the triplet loss under the newest checkpoint (scored in the background).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table};

use super::{Ctx, ellipsize, panel, scroll_offset, thumb};
use crate::tui::app::App;
use crate::tui::tabs::dataset::{ImageInfo, Loadable};
use crate::tui::tabs::triplets::ScoreStatus;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let theme = ctx.theme;
    if !matches!(app.dataset, Loadable::Ready(_)) {
        let msg = match &app.dataset {
            Loadable::Failed(e) => Line::styled(format!("no dataset: {e}"), theme.error()),
            _ => Line::styled("reading the dataset…", theme.muted()),
        };
        frame.render_widget(Paragraph::new(msg).block(panel("Triplets", theme)), area);
        return;
    }
    let t = &app.triplets;
    let thumbs_h = (area.height * 45 / 100).max(9);
    let [pics, status, list] = Layout::vertical([
        Constraint::Length(thumbs_h),
        Constraint::Length(1),
        Constraint::Min(4),
    ])
    .areas(area);
    let selected = t.selected_row();
    let cols = Layout::horizontal([Constraint::Ratio(1, 3); 3]).split(pics);
    let names = ["anchor · consumer", "positive · shop", "negative · shop"];
    for (k, name) in names.iter().enumerate() {
        let block = panel(*name, theme);
        let inner = block.inner(cols[k]);
        frame.render_widget(block, cols[k]);
        let Some((_, row)) = selected else {
            continue;
        };
        let img = match k {
            0 => &row.anchor,
            1 => &row.positive,
            _ => &row.negative,
        };
        let [pic, caption] =
            Layout::vertical([Constraint::Min(1), Constraint::Length(2)]).areas(inner);
        thumb(frame, pic, app, &img.path, ctx);
        frame.render_widget(
            Paragraph::new(caption_lines(img, inner.width, ctx)),
            caption,
        );
    }
    draw_status(frame, status, app, ctx);
    draw_list(frame, list, app, ctx);
}

fn caption_lines<'a>(img: &ImageInfo, w: u16, ctx: &Ctx) -> Vec<Line<'a>> {
    let theme = ctx.theme;
    vec![
        Line::from(vec![
            Span::styled("item ", theme.muted()),
            Span::styled(img.item_id.clone(), theme.base()),
        ]),
        Line::styled(
            ellipsize(&format!("{}/{}", img.big, img.category), w as usize),
            theme.accent(),
        ),
    ]
}

fn draw_status(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.triplets;
    let mut spans = vec![Span::styled(" ", theme.muted())];
    match &t.status {
        ScoreStatus::Idle => spans.push(Span::styled("not scored yet", theme.muted())),
        ScoreStatus::Running {
            weights,
            done,
            total,
        } => spans.push(Span::styled(
            format!("scoring with {weights}: {done}/{total}"),
            theme.warning(),
        )),
        ScoreStatus::Done { weights } => {
            spans.push(Span::styled(
                format!("scored with {weights}"),
                theme.success(),
            ));
        }
        ScoreStatus::Failed(e) => {
            spans.push(Span::styled(format!("scoring failed: {e}"), theme.error()));
        }
    }
    if let Some((mean, active, n)) = t.summary() {
        spans.push(Span::styled(
            format!(
                " · {n} scored: mean loss {mean:.3}, active {:.0}%",
                active * 100.0
            ),
            theme.base(),
        ));
    }
    if let Some((_, row)) = t.selected_row()
        && let Some(Some(s)) = t
            .view
            .get(t.selected)
            .map(|&i| t.scores.get(i).copied().flatten())
    {
        let _ = row;
        spans.push(Span::styled(
            format!(
                " · this one: d(a,p) {:.3} d(a,n) {:.3} loss {:.3}",
                s.d_ap, s.d_an, s.loss
            ),
            theme.accent(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_list(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.triplets;
    let filter = t
        .filter
        .and_then(|f| t.categories.get(f))
        .map_or("all", String::as_str);
    let order = if t.hardest {
        "hardest first"
    } else {
        "sampler"
    };
    let title = format!(
        "Triplets {}/{} · category {filter} · order {order}",
        t.view.len(),
        t.rows.len()
    );
    let visible = area.height.saturating_sub(3) as usize;
    let offset = scroll_offset(t.selected, visible);
    let wide = area.width >= 120;
    let rows: Vec<Row> = t
        .view
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .map(|(pos, &i)| {
            let r = &t.rows[i];
            let s = t.scores.get(i).copied().flatten();
            let num = |v: Option<f32>| v.map_or_else(|| "·".to_string(), |v| format!("{v:.3}"));
            let mut cells = vec![
                format!("{}", i + 1),
                r.anchor.category.clone(),
                r.anchor.item_id.clone(),
                r.negative.item_id.clone(),
                num(s.map(|s| s.d_ap)),
                num(s.map(|s| s.d_an)),
                num(s.map(|s| s.loss)),
            ];
            if wide {
                cells.push(super::file_label(&r.anchor.path));
            }
            let style = if pos == t.selected {
                theme.selected()
            } else if s.is_some_and(|s| s.loss > 0.0) {
                theme.base()
            } else {
                theme.muted()
            };
            Row::new(cells).style(style)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(5),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let mut header = vec![
        "#",
        "category",
        "item",
        "neg. item",
        "d(a,p)",
        "d(a,n)",
        "loss",
    ];
    if wide {
        widths.push(Constraint::Min(10));
        header.push("anchor");
    }
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(theme.title()))
            .block(panel(title, theme)),
        area,
    );
}
