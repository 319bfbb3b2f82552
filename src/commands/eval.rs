//! `vitrine eval`: DeepFashion's top-k accuracy and MAP@R for a run.

use anyhow::Context;

use crate::cli::EvalArgs;
use crate::config::Config;
use crate::eval::saturation_note;
use crate::index::evaluate::{EvalJob, EvalReport, INDEX_RECALL_K, evaluate};
use crate::printable::escape_controls;
use crate::progress::Progress;

pub fn run(config: &Config, args: &EvalArgs) -> anyhow::Result<()> {
    let run = args.run.clone().unwrap_or_default();
    // A run's own dataset and loader settings unless --data names another dataset.
    let run_data = match &args.run {
        Some(run) => super::RunData::of(config, run, args.data.data.as_deref()),
        None => super::RunData {
            root: args
                .data
                .data
                .clone()
                .unwrap_or_else(|| config.data.root.clone()),
            settings: config.data.clone(),
            from_run: false,
        },
    };
    run_data.check(&run)?;
    let mut loader = run_data.settings.clone();
    loader.strict |= args.data.strict;
    let raw_pixels = args.raw_pixels.then(|| {
        // The run's own input size when there is a run, else the configured one.
        crate::index::model::run_config_strict(&run)
            .map_or(config.model.image_size, |c| c.model.image_size)
    });
    let job = EvalJob {
        run: run.clone(),
        data: run_data.root.clone(),
        protocol: args.gallery.unwrap_or(config.data.gallery),
        checkpoint: (!args.untrained).then(|| args.checkpoint.clone()),
        raw_pixels,
        settings: config.index.clone(),
        loader,
        by_category: args.by_category,
        failures: args.failures as usize,
    };
    if !args.json {
        eprintln!(
            "protocol {}: test consumer images as queries vs the de-duplicated shop images of {} ({})",
            job.protocol,
            match job.protocol {
                crate::data::deepfashion::GalleryProtocol::Test => "the test split",
                crate::data::deepfashion::GalleryProtocol::ValTest => "the val and test splits",
            },
            escape_controls(&job.data.display().to_string())
        );
    }
    let mut bars: Vec<(String, Progress)> = Vec::new();
    let json = args.json;
    let report = evaluate(&job, &mut |what, done, total| {
        if bars.last().is_none_or(|(w, _)| w != what) {
            bars.push((what.to_string(), Progress::new(what, total, !json)));
        }
        if let Some((_, bar)) = bars.last_mut() {
            bar.set(done, "");
        }
    })
    .with_context(|| {
        if args.raw_pixels {
            "evaluating raw pixels".to_string()
        } else {
            format!("evaluating run {}", run.display())
        }
    })?;
    if args.json {
        crate::output::line(&crate::printable::json(&report)?)?;
    } else {
        crate::output::text(&render(&report))?;
    }
    Ok(())
}

fn render(r: &EvalReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if r.fingerprint.is_empty() {
        let _ = writeln!(out, "model {}", escape_controls(&r.model));
    } else {
        let _ = writeln!(
            out,
            "model {} (weights {})",
            escape_controls(&r.model),
            r.fingerprint
        );
    }
    let _ = writeln!(
        out,
        "protocol {}: {} queries vs {} gallery images{}",
        r.protocol,
        r.queries,
        r.gallery,
        if r.unreadable > 0 {
            format!(" ({} unreadable images skipped)", r.unreadable)
        } else {
            String::new()
        }
    );
    // Keys are strings ("1", "10", "20", "5"…) for JSON: print them in numeric order.
    let mut top: Vec<(usize, f64)> = r
        .top_k
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, *v)))
        .collect();
    top.sort_by_key(|(k, _)| *k);
    let ks: Vec<String> = top
        .iter()
        .map(|(k, v)| format!("top-{k} {:.1}%", v * 100.0))
        .collect();
    let _ = writeln!(out, "{}", ks.join("  "));
    let reported: Vec<usize> = top.iter().map(|(k, _)| *k).collect();
    if let Some(note) = saturation_note(r.gallery, &reported) {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out, "MAP@R {:.4}", r.map_at_r);
    if let (Some(recall), Some(top_k), Some(backend)) =
        (r.index_recall_at_k, &r.index_top_k, &r.index_backend)
    {
        let top = |k: &str| top_k.get(k).copied().unwrap_or(f64::NAN) * 100.0;
        let graph = if backend == "in-process HNSW" {
            ", on a graph built for this evaluation (not RUN/index)"
        } else {
            ""
        };
        let graph = match r.index_ef {
            Some(ef) => format!("{graph}, beam ef {ef}"),
            None => graph.to_string(),
        };
        let _ = writeln!(
            out,
            "search check: {}{graph}: HNSW + re-rank finds {:.2}% of the exact top-{INDEX_RECALL_K}; \
             its own top-1 {:.1}%, top-20 {:.1}%",
            escape_controls(backend),
            recall * 100.0,
            top("1"),
            top("20")
        );
    }
    if let Some(cats) = &r.by_category {
        let width = cats
            .iter()
            .map(|c| c.category.chars().count())
            .max()
            .unwrap_or(8);
        let _ = writeln!(out, "\nper small category, worst top-20 first:");
        for c in cats {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>5} queries  top-1 {:>5.1}%  top-20 {:>5.1}%",
                escape_controls(&c.category),
                c.queries,
                c.top1 * 100.0,
                c.top20 * 100.0
            );
        }
    }
    if let Some(failures) = &r.failures {
        let _ = writeln!(
            out,
            "\nworst queries (rank of their item's best shop image):"
        );
        for f in failures {
            let _ = writeln!(
                out,
                "  #{:<6} {}  ({} {})\n          true item: {} ({:.3})",
                f.rank,
                escape_controls(&f.query),
                escape_controls(&f.item_id),
                escape_controls(&f.category),
                escape_controls(&f.true_image.path),
                f.true_image.score
            );
            for h in &f.beaten_by {
                let _ = writeln!(
                    out,
                    "          ahead: {} ({}, {:.3})",
                    escape_controls(&h.path),
                    escape_controls(&h.item_id),
                    h.score
                );
            }
        }
    }
    out
}
