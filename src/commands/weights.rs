//! `vitrine weights pull | list`: pretrained weights in the Hugging Face cache.
//! The path goes to stdout (for scripts), the story to stderr.

use crate::cli::{WeightsCommand, WeightsListArgs, WeightsPullArgs};
use crate::progress::{Progress, fmt_bytes};
use crate::weights::{CachedWeights, HubCache, PullOptions, pull};

pub fn run(cmd: &WeightsCommand) -> anyhow::Result<()> {
    match cmd {
        WeightsCommand::Pull(args) => pull_command(args),
        WeightsCommand::List(args) => list_command(args),
    }
}

fn pull_command(args: &WeightsPullArgs) -> anyhow::Result<()> {
    let cache = HubCache::from_env()?;
    let opts = PullOptions::from_env();
    let label = args
        .repo
        .repo
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut bar: Option<Progress> = None;
    let mut report = |done: u64, total: u64| {
        bar.get_or_insert_with(|| Progress::bytes(&label, total, !args.json))
            .set(usize::try_from(done).unwrap_or(usize::MAX), "");
    };
    let result = pull(&cache, &args.repo, &opts, &mut report);
    if let Some(b) = &mut bar {
        b.end();
    }
    let pulled = result?;
    let w = &pulled.weights;
    if args.json {
        let mut value = entry_json(w);
        value["downloaded"] = pulled.downloaded.into();
        value["offline"] = pulled.offline.clone().into();
        crate::output::line(&crate::printable::json(&value)?)?;
        return Ok(());
    }
    if let Some(why) = &pulled.offline {
        eprintln!("{why}: using the cached copy");
    }
    eprintln!(
        "{} (commit {}): {}, {}, sha256 {}{}",
        w.repo,
        short(&w.commit),
        w.file,
        fmt_bytes(w.size as f64),
        w.sha256.as_deref().map_or("not known", short),
        if pulled.downloaded {
            ", downloaded and verified"
        } else {
            ", already in the cache, verified"
        }
    );
    eprintln!(
        "train from it: --pretrained hf:{} (or model.pretrained = \"hf:{}\")",
        w.repo, w.repo
    );
    crate::output::line(&crate::printable::escape_controls(
        &w.path.display().to_string(),
    ))?;
    Ok(())
}

fn list_command(args: &WeightsListArgs) -> anyhow::Result<()> {
    let cache = HubCache::from_env()?;
    let list = cache.list();
    if args.json {
        let values: Vec<_> = list.iter().map(entry_json).collect();
        crate::output::line(&crate::printable::json_pretty(&values)?)?;
        return Ok(());
    }
    if list.is_empty() {
        eprintln!(
            "no weights in {} (fetch some with `vitrine weights pull timm/resnet18.a1_in1k`)",
            cache.root().display()
        );
        return Ok(());
    }
    let width = list
        .iter()
        .map(|w| w.repo.to_string().len() + 3)
        .max()
        .unwrap_or(0);
    for w in &list {
        crate::output::line(&format!(
            "{:<width$}  {:<8}  {:>9}  {}",
            format!("hf:{}", w.repo),
            short(&w.commit),
            fmt_bytes(w.size as f64),
            crate::printable::escape_controls(&w.path.display().to_string())
        ))?;
    }
    Ok(())
}

fn entry_json(w: &CachedWeights) -> serde_json::Value {
    serde_json::json!({
        "repo": w.repo.repo,
        "revision": w.repo.revision,
        "commit": w.commit,
        "file": w.file,
        "path": w.path.display().to_string(),
        "size": w.size,
        "sha256": w.sha256,
    })
}

/// The first 8 characters of a hash.
fn short(hash: &str) -> &str {
    hash.get(..8).unwrap_or(hash)
}
