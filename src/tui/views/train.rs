//! The Train tab: progress, the loss chart (recent window or decimated history),
//! below it val top-20 and top-1 by step against the untrained baseline (their own
//! chart: the val loss is a triplet loss whatever loss trains, so it shares no axis
//! with the train loss), validation per epoch with the val gallery's size, the
//! latest step's figures and the checkpoint/notice log.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Chart, Dataset, Gauge, GraphType, Paragraph, Row, Table, Widget, Wrap};

use super::{Ctx, axis, panel, pct};
use crate::config::PlotMarker;
use crate::printable::duration;
use crate::run::folder::CheckpointKind;
use crate::run::folder::ControlRequest;
use crate::tui::app::App;
use crate::tui::tabs::dataset::Loadable;
use crate::tui::tabs::train::{GallerySizes, Outcome, Phase, TrainState, device_labels};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let [progress, middle, log] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(8),
        Constraint::Length(if area.height >= 36 { 8 } else { 4 }),
    ])
    .areas(area);
    draw_progress(frame, progress, app, ctx);
    let side = if area.width >= 120 { 44 } else { 32 };
    let [charts, stats] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(side)]).areas(middle);
    if validates(app) {
        let val_height = (charts.height * 2 / 5).clamp(7, 16);
        let [loss, val] =
            Layout::vertical([Constraint::Min(7), Constraint::Length(val_height)]).areas(charts);
        draw_chart(frame, loss, app, ctx);
        draw_val_chart(frame, val, app, ctx);
    } else {
        draw_chart(frame, charts, app, ctx);
    }
    draw_stats(frame, stats, app, ctx);
    draw_log(frame, log, app, ctx);
}

fn draw_progress(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.train;
    let mut block = panel("Progress", theme);
    let mut device_in_title = false;
    if let Some(info) = &t.info {
        // Corners, " Progress ", a gap and the label's own spaces.
        let room = usize::from(area.width).saturating_sub(2 + 10 + 1 + 2);
        if let Some(label) = device_labels(info)
            .into_iter()
            .find(|l| l.chars().count() <= room)
        {
            block = block.title_top(
                Line::from(Span::styled(format!(" {label} "), theme.muted())).right_aligned(),
            );
            device_in_title = true;
        }
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [bar, line] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    let (done, total) = t.progress();
    let (epoch, epochs) = t.epoch();
    let phase = t.phase();
    let ratio = if total > 0 {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut label = match phase {
        Phase::Idle => "no training yet".to_string(),
        Phase::WarmingUp => format!("warming up · step {done}/{total}"),
        _ => format!(
            "epoch {epoch}/{epochs} · step {done}/{total} · {:.0}%",
            ratio * 100.0
        ),
    };
    if let Some(eta) = t.eta_seconds() {
        label.push_str(" · ETA ");
        label.push_str(&duration(eta));
    }
    match (&t.outcome, app.trainer.control, app.trainer.running()) {
        (_, ControlRequest::Pause, true) => label.push_str(" · paused"),
        (_, ControlRequest::Stop, true) => label.push_str(" · stopping"),
        (Some(Outcome::Done { reason, .. }), _, _) => {
            label.push_str(" · ");
            label.push_str(reason.describe());
        }
        (Some(Outcome::Failed { .. }), _, _) => label.push_str(" · failed"),
        _ => {}
    }
    frame.render_widget(
        Gauge::default()
            .ratio(ratio)
            .label(Span::styled(label, theme.base()))
            .gauge_style(theme.gauge())
            .use_unicode(true),
        bar,
    );
    let mut spans = Vec::new();
    let mut push = |k: &str, v: String| {
        if !spans.is_empty() {
            spans.push(Span::styled(" · ", theme.muted()));
        }
        if !k.is_empty() {
            spans.push(Span::styled(format!("{k} "), theme.muted()));
        }
        spans.push(Span::styled(v, theme.base()));
    };
    if let Some(s) = &t.last {
        push(
            "",
            if s.images_per_s.is_finite() {
                format!("{:.0} images/s", s.images_per_s)
            } else {
                format!("{:.1} triplets/s", s.triplets_per_s)
            },
        );
    }
    if let Some(i) = t.info.as_ref().filter(|_| !device_in_title) {
        push("", i.device.clone());
    }
    if let Some(s) = &t.last {
        push("lr", format!("{:.2e}", s.lr));
    }
    if let Some(i) = &t.info {
        let recipe = match (i.sampler.as_str(), i.loss.as_str()) {
            ("pk", loss) => format!("{loss} P×K {}×{}", i.batch, i.batch_images / i.batch.max(1)),
            (_, "triplet") => format!("×{} triplets {}", i.batch, i.mining),
            (_, loss) => format!("{loss} ×{} triplets", i.batch),
        };
        push("", format!("{} {}px {recipe}", i.backbone, i.image_size));
    }
    if spans.is_empty() {
        spans.push(Span::styled(
            if app.opts.read_only {
                "waiting for the run's first events…"
            } else {
                "press t to start training"
            },
            theme.muted(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), line);
}

fn draw_chart(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.train;
    let (points, title) = if app.full_history {
        let stride = t.loss.history_stride();
        (
            t.loss.history(),
            if stride > 1 {
                format!("Loss · full history (every {stride}th step)")
            } else {
                "Loss · full history".to_string()
            },
        )
    } else {
        (t.loss.recent(), "Loss · recent steps".to_string())
    };
    let block = panel(title, theme);
    if points.is_empty() {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let msg = match t.phase() {
            Phase::WarmingUp => vec![
                Line::styled("warming up", theme.warning()),
                Line::styled(
                    "loading data, validating the untrained model (the baseline)…",
                    theme.muted(),
                ),
            ],
            _ if app.trainer.starting => {
                vec![Line::styled("starting the trainer…", theme.warning())]
            }
            _ => vec![Line::styled("no steps yet", theme.muted())],
        };
        let h = msg.len() as u16;
        let y = inner.y + inner.height.saturating_sub(h) / 2;
        frame.render_widget(
            Paragraph::new(msg)
                .alignment(Alignment::Center)
                .wrap(Wrap { trim: true }),
            Rect::new(inner.x, y, inner.width, h.min(inner.height)),
        );
        return;
    }
    let smooth = if app.full_history {
        t.smooth.history()
    } else {
        t.smooth.recent()
    };
    let x0 = points.first().map_or(0.0, |p| p.0);
    let x1 = points.last().map_or(1.0, |p| p.0).max(x0 + 1.0);
    let (lo, hi) = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let y0 = (lo - pad).max(0.0).min(hi);
    let y1 = hi + pad;
    let marker = marker(app);
    let datasets = vec![
        Dataset::default()
            .name("train")
            .marker(marker)
            .graph_type(GraphType::Scatter)
            .style(Style::default().fg(theme.train_loss))
            .data(&points),
        Dataset::default()
            .name("smoothed")
            .marker(marker)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(theme.train_loss_smooth))
            .data(&smooth),
    ];
    let chart = Chart::new(datasets)
        .block(block)
        .style(theme.base())
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
    let glyphs = [(theme.train_loss, "."), (theme.train_loss_smooth, "*")];
    render_chart(frame, area, app, chart, &glyphs);
}

fn marker(app: &App) -> Marker {
    match app.opts.plot_marker {
        PlotMarker::Braille => Marker::Braille,
        PlotMarker::Ascii => Marker::Dot,
    }
}

/// Draws `chart`, with ASCII `glyphs` by colour in place of the marker under
/// `ui.plot_marker = "ascii"`.
fn render_chart(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    chart: Chart,
    glyphs: &[(Color, &'static str)],
) {
    if app.opts.plot_marker == PlotMarker::Ascii {
        frame.render_widget(AsciiChart { chart, glyphs }, area);
    } else {
        frame.render_widget(chart, area);
    }
}

/// Whether the run validates (its val split has queries), or did.
fn validates(app: &App) -> bool {
    let t = &app.train;
    t.info.as_ref().is_some_and(|i| i.val_queries > 0)
        || t.baseline.is_some()
        || !t.val_top20.is_empty()
}

/// Val top-20 and top-1 by step, with the untrained model's as reference lines: the
/// metric that matters, on an axis of its own.
fn draw_val_chart(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.train;
    let top20 = theme.val_loss;
    let top1 = theme.accent;
    let untrained = theme.muted;
    let legend = Line::from(vec![
        Span::styled(" top-20", Style::default().fg(top20)),
        Span::styled(" top-1", Style::default().fg(top1)),
        Span::styled(" untrained ", Style::default().fg(untrained)),
    ]);
    let title = if area.width >= 70 {
        "Val retrieval by step"
    } else {
        "Val retrieval"
    };
    let block = panel(title, theme).title_top(legend.right_aligned());
    let Some((x0, x1)) = val_x_range(t) else {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let msg = if t.phase() == Phase::WarmingUp {
            "validating the untrained model…"
        } else {
            "no validation yet"
        };
        let y = inner.y + inner.height.saturating_sub(1) / 2;
        frame.render_widget(
            Paragraph::new(Line::styled(msg, theme.muted())).alignment(Alignment::Center),
            Rect::new(inner.x, y, inner.width, inner.height.min(1)),
        );
        return;
    };
    let flat = |v: f64| {
        if v.is_finite() {
            vec![(x0, v), (x1, v)]
        } else {
            Vec::new()
        }
    };
    let base = t.baseline.map(|b| b.val);
    let base20 = base.map(|b| flat(b.val_top20)).unwrap_or_default();
    let base1 = base.map(|b| flat(b.val_top1)).unwrap_or_default();
    let (y0, y1) = share_bounds(
        t.val_top20
            .iter()
            .chain(&t.val_top1)
            .chain(&base20)
            .chain(&base1)
            .map(|p| p.1),
    );
    let marker = marker(app);
    let series = |data, colour| {
        Dataset::default()
            .marker(marker)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(colour))
            .data(data)
    };
    // The reference lines first: the curves are drawn over them.
    let datasets = vec![
        series(&base1, untrained),
        series(&base20, untrained),
        series(&t.val_top1, top1),
        series(&t.val_top20, top20),
    ];
    let chart = Chart::new(datasets)
        .block(block)
        .style(theme.base())
        .x_axis(axis(
            theme,
            [x0, x1],
            [format!("{x0:.0}"), format!("step {x1:.0}")],
        ))
        .y_axis(axis(theme, [y0, y1], [pct(y0), pct(y1)]));
    let glyphs = [(top20, "o"), (top1, "+"), (untrained, "-")];
    render_chart(frame, area, app, chart, &glyphs);
}

/// The steps the val chart spans: from the first validation (the baseline's) to the
/// newest step; `None` before any validation.
fn val_x_range(t: &TrainState) -> Option<(f64, f64)> {
    let first = t
        .baseline
        .filter(|b| b.val.measured())
        .map(|b| b.step as f64)
        .into_iter()
        .chain(t.val_top20.first().map(|p| p.0))
        .reduce(f64::min)?;
    let last = t
        .val_top20
        .last()
        .map(|p| p.0)
        .into_iter()
        .chain(t.last.map(|s| s.step as f64))
        .fold(first, f64::max);
    Some((first, last.max(first + 1.0)))
}

/// Bounds of a chart of shares (0–1): the values padded by 5%, kept within 0–1.
fn share_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(0.01);
    let y0 = (lo - pad).max(0.0);
    (y0, (hi + pad).min(1.0).max(y0 + 0.01))
}

/// A chart drawn with one-cell markers, then each series' marker replaced by an
/// ASCII character (by its colour), for fonts without Braille or bullet glyphs.
struct AsciiChart<'a> {
    chart: Chart<'a>,
    glyphs: &'a [(Color, &'static str)],
}

impl Widget for AsciiChart<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        self.chart.render(area, buf);
        for y in area.top()..area.bottom() {
            for x in area.left()..area.right() {
                let cell = &mut buf[(x, y)];
                if cell.symbol() == "•" {
                    let glyph = self
                        .glyphs
                        .iter()
                        .find(|(c, _)| *c == cell.fg)
                        .map_or("*", |(_, g)| *g);
                    cell.set_symbol(glyph);
                }
            }
        }
    }
}

fn draw_stats(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.train;
    let [val_area, step_area] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(9)]).areas(area);
    draw_validation(frame, val_area, app, ctx);

    let lines = match &t.last {
        Some(s) => {
            let smooth = t.smooth.last().map_or(f64::NAN, |p| p.1);
            vec![
                kv(theme, "loss", format!("{:.4}", s.loss)),
                kv(theme, "smoothed", format!("{smooth:.4}")),
                kv(theme, "active", pct(f64::from(s.active))),
                kv(theme, "mean d(a,p)", format!("{:.3}", s.d_ap)),
                kv(theme, "mean d(a,n)", format!("{:.3}", s.d_an)),
                kv(theme, "grad norm", format!("{:.3}", s.grad_norm)),
                Line::from(vec![
                    Span::styled(format!("{:<13}", "mean cos"), theme.muted()),
                    Span::styled(
                        // Logs written before the spread was recorded have none.
                        if s.spread.is_finite() {
                            format!("{:.3}", s.spread)
                        } else {
                            "–".to_string()
                        },
                        if t.collapse.is_some() {
                            theme.error()
                        } else {
                            theme.base()
                        },
                    ),
                ]),
            ]
        }
        None => vec![Line::styled("no step yet", theme.muted())],
    };
    let title = t
        .last
        .map_or_else(|| "Last step".to_string(), |s| format!("Step {}", s.step));
    frame.render_widget(Paragraph::new(lines).block(panel(title, theme)), step_area);
}

/// Validation per epoch against the untrained model, and how large the val gallery
/// is against the evaluation's: the whole sentence where the panel has room, the
/// sizes on its bottom border where not.
fn draw_validation(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.train;
    let dataset = match &app.dataset {
        Loadable::Ready(d) => Some(&d.summary),
        _ => None,
    };
    let sizes = t.gallery_sizes(dataset);
    let mut block = panel("Validation", theme);
    let width = usize::from(area.width.saturating_sub(2));
    let note = sizes
        .as_ref()
        .filter(|_| area.height >= 12)
        .map(|g| wrap_words(&gallery_sentence(g), width))
        .unwrap_or_default();
    if note.is_empty()
        && let Some(short) = sizes.as_ref().and_then(|g| {
            gallery_short(g)
                .into_iter()
                .find(|s| s.chars().count() + 2 <= width)
        })
    {
        block = block.title_bottom(Span::styled(format!(" {short} "), theme.muted()));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [table_area, note_area] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(note.len() as u16)]).areas(inner);
    frame.render_widget(
        Paragraph::new(
            note.into_iter()
                .map(|l| Line::styled(l, theme.muted()))
                .collect::<Vec<_>>(),
        ),
        note_area,
    );
    let best = t.best().map(|b| b.0);
    let mut rows: Vec<Row> = Vec::new();
    if let Some(b) = &t.baseline {
        rows.push(
            Row::new(vec![
                "untrained".to_string(),
                pct(b.val.val_top1),
                pct(b.val.val_top20),
                loss_text(b.val.val_loss),
            ])
            .style(theme.muted()),
        );
    }
    let visible = table_area.height.saturating_sub(1) as usize;
    let skip = (t.epochs.len() + rows.len()).saturating_sub(visible);
    for r in t.epochs.iter().skip(skip) {
        let e = r.epoch.unwrap_or(0);
        let mark = if Some(e) == best { " *" } else { "" };
        rows.push(
            Row::new(vec![
                if r.partial {
                    // Validated when the run stopped inside the epoch.
                    format!("step {}{mark}", r.step)
                } else {
                    format!("epoch {}{mark}", e + 1)
                },
                pct(r.val.val_top1),
                pct(r.val.val_top20),
                loss_text(r.val.val_loss),
            ])
            .style(if Some(e) == best {
                theme.success()
            } else {
                theme.base()
            }),
        );
    }
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Min(5),
        ],
    )
    .header(Row::new(vec!["val", "top-1", "top-20", "loss"]).style(theme.title()));
    frame.render_widget(table, table_area);
}

/// `val gallery 198 images (test 561): val top-k reads higher on a smaller gallery`.
fn gallery_sentence(g: &GallerySizes) -> String {
    let val = g.val;
    match &g.eval {
        Some((protocol, n)) if *n > val => format!(
            "val gallery {val} images ({protocol} {n}): val top-k reads higher on a \
             smaller gallery"
        ),
        Some((protocol, n)) => format!("val gallery {val} images ({protocol} {n})"),
        None => format!("val gallery {val} images"),
    }
}

/// The sizes alone, longest first.
fn gallery_short(g: &GallerySizes) -> Vec<String> {
    let val = g.val;
    match &g.eval {
        Some((protocol, n)) => vec![
            format!("gallery val {val} · {protocol} {n}"),
            format!("val {val} · {protocol} {n}"),
        ],
        None => vec![format!("val gallery {val} images"), format!("val {val}")],
    }
}

/// `text` broken at spaces into lines of at most `width` characters (a longer word
/// is cut).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let (n, w) = (line.chars().count(), word.chars().count());
        if n > 0 && n + 1 + w <= width {
            line.push(' ');
            line.push_str(word);
        } else {
            if n > 0 {
                lines.push(std::mem::take(&mut line));
            }
            line = word.chars().take(width).collect();
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn kv<'a>(theme: &crate::theme::Theme, k: &'a str, v: String) -> Line<'a> {
    Line::from(vec![
        Span::styled(format!("{k:<13}"), theme.muted()),
        Span::styled(v, theme.base()),
    ])
}

fn draw_log(frame: &mut Frame, area: Rect, app: &App, ctx: &Ctx) {
    let theme = ctx.theme;
    let t = &app.train;
    let mut lines: Vec<(usize, Line)> = Vec::new();
    for (step, _, kind, path) in &t.checkpoints {
        let kind = match kind {
            CheckpointKind::Last => "last",
            CheckpointKind::Best => "best",
        };
        lines.push((
            *step,
            Line::from(vec![
                Span::styled(format!("step {step:>6} "), theme.muted()),
                Span::styled(format!("checkpoint {kind:<4} "), theme.success()),
                Span::styled(format!("→ {path}"), theme.base()),
            ]),
        ));
    }
    for (step, msg) in &t.notices {
        // The standing collapse warning is drawn on top instead.
        if t.collapse.as_ref().is_some_and(|(_, c)| c == msg) {
            continue;
        }
        lines.push((
            *step,
            Line::from(vec![
                Span::styled(format!("step {step:>6} "), theme.muted()),
                Span::styled(msg.clone(), theme.warning()),
            ]),
        ));
    }
    if let Some(Outcome::Failed { step, message }) = &t.outcome {
        lines.push((
            *step,
            Line::from(vec![
                Span::styled(format!("step {step:>6} "), theme.muted()),
                Span::styled(format!("failed: {message}"), theme.error()),
            ]),
        ));
    }
    if let Some(Outcome::Done {
        step,
        reason,
        best_val_top20,
        seconds,
    }) = &t.outcome
    {
        let best = if best_val_top20.is_finite() {
            format!("best val top-20 {}", pct(*best_val_top20))
        } else {
            "no validation ran".to_string()
        };
        lines.push((
            *step,
            Line::from(vec![
                Span::styled(format!("step {step:>6} "), theme.muted()),
                Span::styled(
                    format!("{} after {}: {best}", reason.describe(), duration(*seconds)),
                    theme.success(),
                ),
            ]),
        ));
    }
    if let Some(e) = &app.metrics_error {
        lines.push((usize::MAX, Line::styled(e.clone(), theme.error())));
    }
    lines.sort_by_key(|l| l.0);
    // A collapse stays on top until the run recovers: it decides whether the run is
    // worth anything.
    let warning = t.collapse.as_ref().map(|(step, msg)| {
        Line::from(vec![
            Span::styled(format!("step {step:>6} "), theme.muted()),
            Span::styled(format!("⚠ {msg}"), theme.error()),
        ])
    });
    let visible =
        (area.height.saturating_sub(2) as usize).saturating_sub(usize::from(warning.is_some()));
    let skip = lines.len().saturating_sub(visible);
    let lines: Vec<Line> = warning
        .into_iter()
        .chain(lines.into_iter().skip(skip).map(|l| l.1))
        .collect();
    let lines = if lines.is_empty() {
        vec![Line::styled(
            "checkpoints and notices appear here",
            theme.muted(),
        )]
    } else {
        lines
    };
    frame.render_widget(Paragraph::new(lines).block(panel("Events", theme)), area);
}

/// A validation loss, `n/a` when there was nothing to measure it on.
fn loss_text(v: f32) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "n/a".to_string()
    }
}
