use std::sync::Mutex;

use crate::cli::SynthArgs;
use crate::config::Config;
use crate::data::synth::{SynthOptions, generate};
use crate::progress::Progress;

pub fn run(config: &Config, args: &SynthArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| config.data.root.clone());
    let opts = SynthOptions {
        items: args.items.unwrap_or(config.synth.items),
        size: args.size.unwrap_or(config.synth.size),
        seed: args.seed.unwrap_or(config.synth.seed),
    };
    let report = write(&opts, &out, !args.json)?;
    if args.json {
        crate::output::line(&crate::printable::json(&report)?)?;
    } else {
        let images = report.consumer_images + report.shop_images;
        crate::output::line(&format!(
            "wrote {} items ({} consumer + {} shop images, {} pairs) to {} in {:.2} s ({:.0} images/s)",
            report.items,
            report.consumer_images,
            report.shop_images,
            report.pairs,
            out.display(),
            report.seconds,
            images as f64 / report.seconds.max(1e-9)
        ))?;
    }
    Ok(())
}

/// Generates with a progress display; shared with `demo`.
pub fn write(
    opts: &SynthOptions,
    out: &std::path::Path,
    show_progress: bool,
) -> anyhow::Result<crate::data::synth::SynthReport> {
    let progress = Mutex::new(Progress::new("synth", opts.items, show_progress));
    let report = generate(opts, out, &|done, _total| {
        if let Ok(mut p) = progress.lock() {
            p.set(done, "items");
        }
    })?;
    Ok(report)
}
