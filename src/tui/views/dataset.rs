//! The Dataset tab: the split table (pairs, items, consumer/shop images, the query and
//! gallery of the protocol), missing/unreadable counts, and items per big and small
//! category as bar charts.

use std::collections::BTreeMap;

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Bar, BarChart, BarGroup, Paragraph, Row, Table};

use super::{Ctx, panel};
use crate::data::deepfashion::{Split, SplitSummary};
use crate::tui::app::App;
use crate::tui::tabs::dataset::Loadable;

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let theme = ctx.theme;
    let info = match &app.dataset {
        Loadable::Ready(info) => info,
        Loadable::Loading => {
            frame.render_widget(
                Paragraph::new(Line::styled(
                    format!("reading the dataset at {}…", app.opts.data.display()),
                    theme.muted(),
                ))
                .block(panel("Dataset", theme)),
                area,
            );
            return;
        }
        Loadable::Failed(e) => {
            frame.render_widget(
                Paragraph::new(vec![
                    Line::styled("cannot read the dataset", theme.error()),
                    Line::raw(e.clone()),
                ])
                .wrap(ratatui::widgets::Wrap { trim: true })
                .block(panel("Dataset", theme)),
                area,
            );
            return;
        }
    };
    let s = &info.summary;
    let [table_area, charts] =
        Layout::vertical([Constraint::Length(9), Constraint::Min(4)]).areas(area);
    draw_table(frame, table_area, app, s, ctx);
    let big_w = if area.width >= 120 { 50 } else { 30 };
    let [big, small] =
        Layout::horizontal([Constraint::Length(big_w), Constraint::Min(20)]).areas(charts);
    let mut by_big: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &s.categories {
        *by_big.entry(c.big.as_str()).or_default() += c.items as u64;
    }
    let big_bars: Vec<(String, u64)> = by_big
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut small_bars: Vec<(String, u64)> = s
        .categories
        .iter()
        .map(|c| (c.small.clone(), c.items as u64))
        .collect();
    small_bars.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    bars(
        frame,
        big,
        "Items per big category",
        &big_bars,
        theme.accent(),
        ctx,
    );
    bars(
        frame,
        small,
        "Items per small category",
        &small_bars,
        Style::default().fg(theme.train_loss_smooth),
        ctx,
    );
}

fn draw_table(frame: &mut Frame, area: Rect, app: &App, s: &SplitSummary, ctx: &Ctx) {
    let theme = ctx.theme;
    let mut rows: Vec<Row> = Split::ALL
        .iter()
        .map(|&sp| {
            Row::new(vec![
                sp.name().to_string(),
                s.pairs.get(sp).to_string(),
                s.items.get(sp).to_string(),
                s.consumer.get(sp).to_string(),
                s.shop.get(sp).to_string(),
            ])
        })
        .collect();
    let total = |c: &crate::data::deepfashion::SplitCounts| c.train + c.val + c.test;
    rows.push(
        Row::new(vec![
            "all".to_string(),
            total(&s.pairs).to_string(),
            total(&s.items).to_string(),
            total(&s.consumer).to_string(),
            total(&s.shop).to_string(),
        ])
        .style(theme.muted()),
    );
    let [t, notes] = Layout::horizontal([Constraint::Length(44), Constraint::Min(20)]).areas(area);
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(7),
            ],
        )
        .header(Row::new(vec!["split", "pairs", "items", "consumer", "shop"]).style(theme.title()))
        .block(panel("Splits", theme)),
        t,
    );
    let kv = |k: &str, v: String, style: Style| {
        Line::from(vec![
            Span::styled(format!("{k:<12}"), theme.muted()),
            Span::styled(v, style),
        ])
    };
    let warn = |n: usize| if n > 0 { theme.warning() } else { theme.base() };
    let lines = vec![
        kv("protocol", s.protocol.clone(), theme.accent()),
        kv("queries", format!("{} (consumer)", s.query), theme.base()),
        kv("gallery", format!("{} (shop)", s.gallery), theme.base()),
        kv("images", s.images.to_string(), theme.base()),
        kv(
            "missing",
            format!("{} ({} pairs skipped)", s.missing, s.dropped_pairs),
            warn(s.missing),
        ),
        kv(
            "unreadable",
            app.thumbs.unreadable().to_string(),
            warn(app.thumbs.unreadable()),
        ),
        kv("root", app.opts.data.display().to_string(), theme.muted()),
    ];
    frame.render_widget(Paragraph::new(lines).block(panel("Protocol", theme)), notes);
}

fn bars(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    data: &[(String, u64)],
    style: Style,
    ctx: &Ctx,
) {
    let theme = ctx.theme;
    // One row per bar: a list longer than the panel says how much it shows.
    let rows = usize::from(area.height.saturating_sub(2));
    let cut = format!("{title} ({rows} of {} shown)", data.len());
    let (title, data) = if data.len() > rows && rows > 0 {
        (cut.as_str(), &data[..rows])
    } else {
        (title, data)
    };
    let label_w = data
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(4)
        .min(16);
    let bars: Vec<Bar> = data
        .iter()
        .map(|(k, v)| {
            Bar::default()
                .value(*v)
                .label(Line::from(format!("{k:<label_w$.label_w$}")))
                .style(style)
                .value_style(theme.selected())
        })
        .collect();
    let chart = BarChart::default()
        .block(panel(title, theme))
        .direction(Direction::Horizontal)
        .bar_width(1)
        .bar_gap(0)
        .data(BarGroup::default().bars(&bars));
    frame.render_widget(chart, area);
}
