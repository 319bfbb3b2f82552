//! The Train tab: progress, the loss chart (recent window or decimated history),
//! validation per epoch against the untrained baseline, the latest step's figures
//! and the checkpoint/notice log.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Chart, Dataset, Gauge, GraphType, Paragraph, Row, Table, Widget, Wrap,
};

use super::{Ctx, panel, pct};
use crate::run::CheckpointKind;
use crate::run::folder::ControlRequest;
use crate::tui::app::App;
use crate::tui::settings::PlotMarker;
use crate::tui::tabs::train::{Outcome, Phase, device_labels, format_duration};

pub fn draw(frame: &mut Frame, area: Rect, app: &App, ctx: &mut Ctx) {
    let [progress, middle, log] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(8),
        Constraint::Length(if area.height >= 36 { 8 } else { 4 }),
    ])
    .areas(area);
    draw_progress(frame, progress, app, ctx);
    let side = if area.width >= 120 { 44 } else { 32 };
    let [chart, stats] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(side)]).areas(middle);
    draw_chart(frame, chart, app, ctx);
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
        label.push_str(&format_duration(eta));
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
    let val: Vec<(f64, f64)> = t
        .baseline
        .iter()
        .chain(&t.epochs)
        .map(|r| (r.step as f64, f64::from(r.val.val_loss)))
        .filter(|p| p.1.is_finite() && p.0 >= x0 && p.0 <= x1)
        .collect();
    let (lo, hi) = points
        .iter()
        .chain(val.iter())
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let y0 = (lo - pad).max(0.0).min(hi);
    let y1 = hi + pad;
    let marker = match app.opts.plot_marker {
        PlotMarker::Braille => Marker::Braille,
        PlotMarker::Ascii => Marker::Dot,
    };
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
        Dataset::default()
            .name("val")
            .marker(marker)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(theme.val_loss))
            .data(&val),
    ];
    let chart = Chart::new(datasets)
        .block(block)
        .style(theme.base())
        .x_axis(
            Axis::default()
                .style(theme.muted())
                .bounds([x0, x1])
                .labels([format!("{x0:.0}"), format!("step {x1:.0}")]),
        )
        .y_axis(
            Axis::default()
                .style(theme.muted())
                .bounds([y0, y1])
                .labels([format!("{y0:.2}"), format!("{y1:.2}")]),
        );
    if app.opts.plot_marker == PlotMarker::Ascii {
        let glyphs = [
            (theme.train_loss, "."),
            (theme.train_loss_smooth, "*"),
            (theme.val_loss, "o"),
        ];
        frame.render_widget(AsciiChart { chart, glyphs }, area);
    } else {
        frame.render_widget(chart, area);
    }
}

/// A chart drawn with one-cell markers, then each series' marker replaced by an
/// ASCII character (by its colour), for fonts without Braille or bullet glyphs.
struct AsciiChart<'a> {
    chart: Chart<'a>,
    glyphs: [(Color, &'static str); 3],
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
    let visible = val_area.height.saturating_sub(3) as usize;
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
    .header(Row::new(vec!["val", "top-1", "top-20", "loss"]).style(theme.title()))
    .block(panel("Validation", theme));
    frame.render_widget(table, val_area);

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
                    format!(
                        "{} after {}: {best}",
                        reason.describe(),
                        format_duration(*seconds)
                    ),
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
