//! `vitrine index`: embed a gallery with a run's checkpoint into RUN/index/.

use anyhow::Context;

use crate::cli::IndexArgs;
use crate::config::Config;
use crate::index::build::{self, Gallery, IndexJob, IndexReport};
use crate::index::store::SourceRecord;
use crate::progress::Progress;

pub fn run(config: &Config, args: &IndexArgs) -> anyhow::Result<()> {
    // The run's dataset and loader settings unless --data names another dataset.
    let run_data = super::RunData::of(config, &args.run, args.data.as_deref());
    let mut data = run_data.settings.clone();
    data.strict |= args.strict;
    let mut bar: Option<Progress> = None;
    let json = args.json;
    let mut progress = |done: usize, total: usize| {
        bar.get_or_insert_with(|| Progress::new("embed", total, !json))
            .set(done, "");
    };
    let report = if let Some(dir) = &args.add {
        build::add(
            &args.run,
            &args.checkpoint,
            dir,
            &config.index,
            &data,
            &mut progress,
        )
        .with_context(|| {
            format!(
                "adding {} to the index of {}",
                dir.display(),
                args.run.display()
            )
        })?
    } else {
        let gallery = match &args.images {
            Some(dir) => Gallery::Folder(dir.clone()),
            None => {
                run_data.check(&args.run)?;
                Gallery::Dataset {
                    root: run_data.root.clone(),
                    protocol: args.gallery.unwrap_or(config.data.gallery),
                }
            }
        };
        let job = IndexJob {
            run: args.run.clone(),
            checkpoint: args.checkpoint.clone(),
            gallery,
            settings: config.index.clone(),
            data,
        };
        build::build(&job, &mut progress)
            .with_context(|| format!("indexing for run {}", args.run.display()))?
    };
    if args.json {
        crate::output::line(&serde_json::to_string(&report)?)?;
    } else {
        print_report(&report)?;
    }
    Ok(())
}

fn print_report(r: &IndexReport) -> anyhow::Result<()> {
    let source = match &r.source {
        SourceRecord::Dataset { root, protocol } => {
            format!("protocol {protocol}: the de-duplicated shop images of {root}")
        }
        SourceRecord::Folder { root } => format!("every image under {root}"),
    };
    crate::output::line(&format!("gallery: {source}"))?;
    if r.already_indexed > 0 {
        crate::output::line(&format!(
            "{} images were already in the index",
            r.already_indexed
        ))?;
    }
    if r.unreadable > 0 {
        crate::output::line(&format!(
            "{} unreadable images skipped (see the log)",
            r.unreadable
        ))?;
    }
    crate::output::line(&format!(
        "index {}: {} vectors of {} dims ({} added; embedding {:.1} s, graph {:.1} s, self-recall {:.4}), weights {} ({})",
        r.dir.display(),
        r.count,
        r.dim,
        r.added,
        r.embed_seconds,
        r.graph_seconds,
        r.self_recall,
        r.fingerprint,
        r.checkpoint
    ))?;
    Ok(())
}
