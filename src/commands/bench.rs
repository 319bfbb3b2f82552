use std::time::Instant;

use anyhow::bail;

use crate::cli::{BenchCommand, BenchLoadArgs};
use crate::config::Config;
use crate::data::loader::{LoaderConfig, Prefetcher};

pub fn run(config: &Config, cmd: &BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Load(args) => load(config, args),
    }
}

fn load(config: &Config, args: &BenchLoadArgs) -> anyhow::Result<()> {
    let ds = super::open_dataset(config, &args.data)?;
    if args.batch == 0 || args.batches == 0 {
        bail!("--batch and --batches must be at least 1");
    }
    let cfg = LoaderConfig {
        size: args.image_size.unwrap_or(64),
        crop: config.data.crop,
        workers: config.data.workers,
        prefetch: config.data.prefetch,
    };
    let images: Vec<usize> = (0..ds.images.len()).filter(|&i| ds.images[i].present).collect();
    if images.is_empty() {
        bail!("the dataset has no readable images");
    }
    // One warm-up batch, then the timed ones, cycling through the dataset.
    let batches: Vec<_> = (0..=args.batches)
        .map(|b| {
            (0..args.batch)
                .map(|j| vec![ds.spec(images[(b * args.batch + j) % images.len()])])
                .collect()
        })
        .collect();
    let mut loader = Prefetcher::spawn(batches, cfg)?;
    let _warm = loader.next();
    let start = Instant::now();
    let mut n = 0usize;
    let mut failed = 0usize;
    for batch in loader {
        n += batch.n;
        failed += batch.failed.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let per_s = n as f64 / secs.max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"images_per_s": per_s, "images": n, "failed": failed, "image_size": cfg.size, "seconds": secs})
        );
    } else {
        println!(
            "loader: {n} images at {} px in {secs:.2} s = {per_s:.0} images/s ({failed} unreadable)",
            cfg.size
        );
    }
    Ok(())
}
