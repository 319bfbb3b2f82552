//! `vitrine runs`: the runs in a folder, one line each (or JSON).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::RunsArgs;
use crate::config::Config;
use crate::printable::{ago_exact, duration, escape_controls};
use crate::train::runs::{self, RunStatus, RunSummary};

pub fn run(config: &Config, args: &RunsArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        config
            .train
            .run
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
    });
    let list =
        runs::list(&dir).with_context(|| format!("cannot list runs in {}", dir.display()))?;
    for r in &list {
        if r.path_not_utf8 {
            eprintln!(
                "note: the name of run folder {} is not UTF-8; each invalid byte is shown as U+FFFD",
                escape_controls(&r.path.to_string_lossy())
            );
        }
        if let (RunStatus::Unreadable, Some(why)) = (r.status, &r.message) {
            eprintln!(
                "note: run {} is unreadable: {}",
                escape_controls(&r.name),
                escape_controls(why)
            );
        }
    }
    if args.json {
        crate::output::line(&crate::printable::json_pretty(&list)?)?;
        return Ok(());
    }
    if list.is_empty() {
        let dir = escape_controls(&dir.display().to_string()).into_owned();
        eprintln!("no runs in {dir} (train one with `vitrine train --run {dir}/NAME`)");
        return Ok(());
    }
    crate::output::line(&table(&list))?;
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{:.1}%", 100.0 * v))
}

/// The runs as an aligned text table.
pub fn table(list: &[RunSummary]) -> String {
    let header = [
        "run", "status", "backbone", "px", "loss", "miner", "steps", "top-1", "top-20", "time",
        "updated",
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                // Every text field comes from the run's files: escaped, never raw.
                escape_controls(&r.name).into_owned(),
                r.status.name().to_string(),
                escape_controls(&r.backbone).into_owned(),
                r.image_size.to_string(),
                escape_controls(&r.loss).into_owned(),
                if r.loss == "triplet" {
                    escape_controls(&r.mining).into_owned()
                } else {
                    "—".into()
                },
                if r.total_steps > 0 {
                    format!("{}/{}", r.step, r.total_steps)
                } else {
                    r.step.to_string()
                },
                pct(r.best_val_top1),
                pct(r.best_val_top20),
                duration(r.seconds),
                ago_exact(r.updated, now),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out.truncate(out.trim_end().len());
    out
}
