//! `vitrine index`: embed a gallery with a run's checkpoint into RUN/index/.

use anyhow::Context;

use crate::cli::IndexArgs;
use crate::config::{Config, IndexBackend};
use crate::index::backend::pg_target;
use crate::index::build::{self, Gallery, IndexJob, IndexReport};
use crate::index::postgres::load::{self, PgIndexReport};
use crate::index::store::SourceRecord;
use crate::index::tune::EfChoice;
use crate::printable::escape_controls;
use crate::progress::Progress;

pub fn run(config: &Config, args: &IndexArgs) -> anyhow::Result<()> {
    let backend = args.backend.unwrap_or(config.index.backend);
    if backend == IndexBackend::Postgres || args.finalize || args.shard.is_some() {
        return postgres(config, args, backend);
    }
    if args.pg_url.is_some() || args.table.is_some() {
        anyhow::bail!(
            "--pg-url and --table need --backend postgres (or index.backend = \"postgres\")"
        );
    }
    let (run_data, data) = gallery_data(config, args);
    let mut progress = embed_progress(args.json);
    let mut measure = measure_progress(args.json);
    let report = if let Some(dir) = &args.add {
        build::add_reporting(
            &args.run,
            &args.checkpoint,
            dir,
            &config.index,
            &data,
            &mut progress,
            &mut measure,
        )
        .with_context(|| {
            format!(
                "adding {} to the index of {}",
                dir.display(),
                args.run.display()
            )
        })?
    } else {
        let job = job(config, args, &run_data, data)?;
        build::build_reporting(&job, &mut progress, &mut measure)
            .with_context(|| format!("indexing for run {}", args.run.display()))?
    };
    if args.json {
        crate::output::line(&crate::printable::json(&report)?)?;
    } else {
        print_report(&report)?;
    }
    Ok(())
}

/// The run's dataset and loader settings unless --data names another dataset.
fn gallery_data(config: &Config, args: &IndexArgs) -> (super::RunData, crate::config::DataConfig) {
    let run_data = super::RunData::of(config, &args.run, args.data.as_deref());
    let mut data = run_data.settings.clone();
    data.strict |= args.strict;
    (run_data, data)
}

/// The embedding progress bar (none under --json), made at the first report.
fn embed_progress(json: bool) -> impl FnMut(usize, usize) {
    let mut bar: Option<Progress> = None;
    move |done, total| {
        bar.get_or_insert_with(|| Progress::new("embed", total, !json))
            .set(done, "");
    }
}

/// The progress of measuring the search beam (none under --json): the exact ranking
/// of the sampled gallery vectors, then each beam tried.
fn measure_progress(json: bool) -> impl FnMut(usize, usize) {
    let mut bar: Option<Progress> = None;
    move |done, total| {
        bar.get_or_insert_with(|| Progress::new("recall", total, !json))
            .set(done, "");
    }
}

fn job(
    config: &Config,
    args: &IndexArgs,
    run_data: &super::RunData,
    data: crate::config::DataConfig,
) -> anyhow::Result<IndexJob> {
    let gallery = if let Some(dir) = &args.images {
        Gallery::Folder(dir.clone())
    } else {
        run_data.check(&args.run)?;
        Gallery::Dataset {
            root: run_data.root.clone(),
            protocol: args.gallery.unwrap_or(config.data.gallery),
        }
    };
    Ok(IndexJob {
        run: args.run.clone(),
        checkpoint: args.checkpoint.clone(),
        gallery,
        settings: config.index.clone(),
        data,
    })
}

/// `--backend postgres`: the whole gallery, one shard, or `--finalize`.
fn postgres(config: &Config, args: &IndexArgs, backend: IndexBackend) -> anyhow::Result<()> {
    if backend != IndexBackend::Postgres {
        anyhow::bail!(
            "--shard and --finalize load into PostgreSQL: add --backend postgres (or set index.backend = \"postgres\")"
        );
    }
    if args.add.is_some() {
        anyhow::bail!(
            "--add extends the local index; for a gallery in PostgreSQL index it again (the new version replaces the live one without interrupting searches)"
        );
    }
    let target = pg_target(&config.index, args.pg_url.as_deref(), args.table.as_deref())?;
    let report = if args.finalize {
        load::finalize(&args.run, &target)
            .with_context(|| format!("finalising {} in {}", target.table, target.url))?
    } else {
        let (run_data, data) = gallery_data(config, args);
        let mut progress = embed_progress(args.json);
        let what = args
            .shard
            .map_or_else(String::new, |s| format!(" (shard {s})"));
        load::index(
            &job(config, args, &run_data, data)?,
            &target,
            args.shard,
            &mut progress,
        )
        .with_context(|| {
            format!(
                "indexing for run {} into {} at {}{what}",
                args.run.display(),
                target.table,
                target.url
            )
        })?
    };
    if args.json {
        crate::output::line(&crate::printable::json(&report)?)?;
    } else {
        print_pg_report(&report)?;
    }
    Ok(())
}

fn print_pg_report(r: &PgIndexReport) -> anyhow::Result<()> {
    if r.unreadable > 0 {
        crate::output::line(&format!(
            "{} unreadable images skipped (see the log)",
            r.unreadable
        ))?;
    }
    if let Some(shard) = &r.shard {
        crate::output::line(&format!(
            "shard {shard}: {} rows added to version {} of {} at {} (embedding {:.1} s, copy {:.1} s)",
            r.added, r.version, r.table, r.url, r.embed_seconds, r.copy_seconds
        ))?;
    } else if r.added > 0 {
        crate::output::line(&format!(
            "{} rows loaded into version {} of {} at {} (embedding {:.1} s, copy {:.1} s)",
            r.added, r.version, r.table, r.url, r.embed_seconds, r.copy_seconds
        ))?;
    }
    let done: Vec<String> = r
        .shards_done
        .iter()
        .map(|s| format!("{s}/{}", r.shards))
        .collect();
    if r.live {
        crate::output::line(&format!(
            "version {} of {} is live: {} vectors of {} dims (HNSW build {:.1} s{}), weights {} ({}); recorded in {}",
            r.version,
            r.table,
            r.count,
            r.dim,
            r.build_seconds,
            if r.dropped.is_empty() {
                String::new()
            } else {
                let v: Vec<String> = r.dropped.iter().map(ToString::to_string).collect();
                format!(", dropped version {}", v.join(", "))
            },
            r.fingerprint,
            escape_controls(&r.checkpoint),
            r.dir
                .as_deref()
                .map_or_else(String::new, |d| escape_controls(&d.display().to_string())
                    .into_owned())
        ))?;
    } else {
        crate::output::line(&format!(
            "version {} holds {} rows from shards {} of {}; run the others, then `vitrine index --run RUN --backend postgres --finalize`",
            r.version,
            r.count,
            done.join(", "),
            r.shards
        ))?;
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
    crate::output::line(&format!("gallery: {}", escape_controls(&source)))?;
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
        escape_controls(&r.dir.display().to_string()),
        r.count,
        r.dim,
        r.added,
        r.embed_seconds,
        r.graph_seconds,
        r.self_recall,
        r.fingerprint,
        escape_controls(&r.checkpoint)
    ))?;
    crate::output::line(&ef_summary(r.search_ef.as_ref()))?;
    Ok(())
}

/// One line on the search beam `index` measured.
pub fn ef_summary(choice: Option<&EfChoice>) -> String {
    let Some(c) = choice else {
        return "search beam: not measured (an index written before vitrine measured it, or a graph that could not be read back); searches use index.shortlist unless index.ef_search is set".into();
    };
    let sample = if c.sample > 0 {
        format!(" on {} gallery images", c.sample)
    } else {
        " (every image is in every result)".to_string()
    };
    if c.reached {
        format!(
            "search beam: ef {} reaches recall@{} {:.4}{sample} (target {}, index.target_recall); searches use it unless index.ef_search is set",
            c.ef, c.k, c.recall, c.target
        )
    } else {
        format!(
            "search beam: even ef {} reaches only recall@{} {:.4}{sample}, short of the target {} (index.target_recall); searches use it unless index.ef_search is set",
            c.ef, c.k, c.recall, c.target
        )
    }
}
