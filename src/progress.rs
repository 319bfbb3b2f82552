//! Progress for long headless work: a redrawn bar on a terminal, plain lines
//! (about every 10% or 10 s) when stderr is a pipe or a file. Counts are items, or
//! bytes shown in kB/MB/GB ([`Progress::bytes`]).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::printable::duration;

pub struct Progress {
    label: String,
    total: usize,
    start: Instant,
    last_draw: Instant,
    last_line_pct: usize,
    tty: bool,
    enabled: bool,
    bytes: bool,
    /// Whether the terminal line ends without a newline (a bar still drawn).
    open_line: bool,
}

impl Progress {
    /// `enabled = false` makes it silent (e.g. under `--json`).
    pub fn new(label: &str, total: usize, enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            label: label.to_string(),
            total: total.max(1),
            start: now,
            last_draw: now.checked_sub(Duration::from_secs(60)).unwrap_or(now),
            last_line_pct: 0,
            tty: std::io::stderr().is_terminal(),
            enabled,
            bytes: false,
            open_line: false,
        }
    }

    /// A progress of `total` bytes: counts and rates in kB, MB or GB.
    pub fn bytes(label: &str, total: u64, enabled: bool) -> Self {
        let mut p = Self::new(label, usize::try_from(total).unwrap_or(usize::MAX), enabled);
        p.bytes = true;
        p
    }

    /// Ends a bar that stopped short of its total with a newline, so the next line
    /// is not written over it.
    pub fn end(&mut self) {
        if self.open_line {
            self.open_line = false;
            let _ = writeln!(std::io::stderr().lock());
        }
    }

    fn amount(&self, n: f64) -> String {
        if self.bytes {
            fmt_bytes(n)
        } else {
            format!("{n:.0}")
        }
    }

    fn rate(&self, per_s: f64) -> String {
        if self.bytes {
            fmt_bytes(per_s)
        } else {
            format!("{per_s:.1}")
        }
    }

    pub fn set(&mut self, done: usize, extra: &str) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let pct = done * 100 / self.total;
        let finished = done >= self.total;
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        let eta = if done > 0 {
            (self.total - done.min(self.total)) as f64 / rate
        } else {
            f64::NAN
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            if !finished && now.duration_since(self.last_draw) < Duration::from_millis(100) {
                return;
            }
            self.last_draw = now;
            let width = 30;
            let filled = (done.min(self.total) * width) / self.total;
            let _ = write!(
                err,
                "\r\x1b[2K{} [{}{}] {:>3}% {}/{} {}/s ETA {} {}",
                self.label,
                "#".repeat(filled),
                " ".repeat(width - filled),
                pct,
                self.amount(done as f64),
                self.amount(self.total as f64),
                self.rate(rate),
                duration(eta),
                extra
            );
            self.open_line = !finished;
            if finished {
                let _ = writeln!(err);
            }
        } else if finished
            || pct >= self.last_line_pct + 10
            || now.duration_since(self.last_draw) >= Duration::from_secs(10)
        {
            self.last_draw = now;
            self.last_line_pct = pct - pct % 10;
            let _ = writeln!(
                err,
                "{}: {}/{} ({pct}%) {}/s ETA {} {extra}",
                self.label,
                self.amount(done as f64),
                self.amount(self.total as f64),
                self.rate(rate),
                duration(eta)
            );
        }
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
