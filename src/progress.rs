//! Progress for long headless work: an `indicatif` bar on a terminal, plain lines
//! (about every 10% or 10 s) when stderr is a pipe or a file, where indicatif draws
//! nothing at all. Counts are items, or bytes shown in kB/MB/GB ([`Progress::bytes`]).

use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressState, ProgressStyle};

use crate::printable::duration;

pub struct Progress {
    label: String,
    total: usize,
    bytes: bool,
    out: Output,
}

enum Output {
    /// `enabled = false`: nothing.
    Silent,
    /// stderr is a terminal: indicatif redraws the bar in place.
    Bar(ProgressBar),
    /// stderr is a pipe or a file: a plain line now and then.
    Lines(Lines),
}

struct Lines {
    start: Instant,
    last_line: Instant,
    last_line_pct: usize,
}

impl Progress {
    /// `enabled = false` makes it silent (e.g. under `--json`).
    pub fn new(label: &str, total: usize, enabled: bool) -> Self {
        Self::with_unit(label, total, enabled, false)
    }

    /// A progress of `total` bytes: counts and rates in kB, MB or GB.
    pub fn bytes(label: &str, total: u64, enabled: bool) -> Self {
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        Self::with_unit(label, total, enabled, true)
    }

    fn with_unit(label: &str, total: usize, enabled: bool, bytes: bool) -> Self {
        let total = total.max(1);
        let out = if !enabled {
            Output::Silent
        } else if std::io::stderr().is_terminal() {
            Output::Bar(bar(label, total, bytes))
        } else {
            let now = Instant::now();
            Output::Lines(Lines {
                start: now,
                last_line: now.checked_sub(Duration::from_secs(60)).unwrap_or(now),
                last_line_pct: 0,
            })
        };
        Self {
            label: label.to_string(),
            total,
            bytes,
            out,
        }
    }

    /// Ends a bar that stopped short of its total, leaving it drawn as it is, so the
    /// next line is not written over it.
    pub fn end(&mut self) {
        if let Output::Bar(b) = &self.out
            && !b.is_finished()
        {
            b.abandon();
        }
    }

    /// `done` of the total so far; `extra` is shown after the figures.
    pub fn set(&mut self, done: usize, extra: &str) {
        match &mut self.out {
            Output::Silent => {}
            Output::Bar(b) => {
                b.set_message(extra.to_string());
                // Parallel workers may report out of order; going back would reset
                // indicatif's rate estimate.
                b.set_position(b.position().max(done as u64));
                if done >= self.total {
                    b.finish();
                }
            }
            Output::Lines(lines) => {
                let now = Instant::now();
                let pct = done * 100 / self.total;
                let finished = done >= self.total;
                if !(finished
                    || pct >= lines.last_line_pct + 10
                    || now.duration_since(lines.last_line) >= Duration::from_secs(10))
                {
                    return;
                }
                lines.last_line = now;
                lines.last_line_pct = pct - pct % 10;
                let rate = done as f64 / lines.start.elapsed().as_secs_f64().max(1e-9);
                let eta = if done > 0 {
                    (self.total - done.min(self.total)) as f64 / rate
                } else {
                    f64::NAN
                };
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "{}: {}/{} ({pct}%) {}/s ETA {} {extra}",
                    self.label,
                    amount(self.bytes, done as f64),
                    amount(self.bytes, self.total as f64),
                    rate_text(self.bytes, rate),
                    duration(eta)
                );
            }
        }
    }
}

/// The terminal bar: `label [####      ]  40% 40/100 12.5/s ETA 5s extra`, redrawn
/// by indicatif (at most 20 times a second); a bar dropped short of its total stays
/// as it was drawn.
fn bar(label: &str, total: usize, bytes: bool) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {percent:>3}% {done}/{total} {rate}/s ETA {left} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("# ")
    .with_key(
        "done",
        move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&amount(bytes, s.pos() as f64));
        },
    )
    .with_key(
        "total",
        move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&amount(bytes, s.len().unwrap_or(0) as f64));
        },
    )
    .with_key(
        "rate",
        move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&rate_text(bytes, s.per_sec()));
        },
    )
    .with_key("left", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let left = if s.pos() == 0 {
            f64::NAN
        } else {
            s.eta().as_secs_f64()
        };
        let _ = w.write_str(&duration(left));
    });
    ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(label.to_string())
        .with_finish(ProgressFinish::Abandon)
}

fn amount(bytes: bool, n: f64) -> String {
    if bytes {
        fmt_bytes(n)
    } else {
        format!("{n:.0}")
    }
}

fn rate_text(bytes: bool, per_s: f64) -> String {
    if bytes {
        fmt_bytes(per_s)
    } else {
        format!("{per_s:.1}")
    }
}

/// `512 B`, `46.8 MB`, `1.2 GB` (decimal units, as the Hub shows sizes).
pub fn fmt_bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if !n.is_finite() {
        return "?".into();
    }
    if n < 1000.0 {
        return format!("{n:.0} B");
    }
    let mut v = n / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
