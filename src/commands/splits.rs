use crate::cli::SplitsArgs;
use crate::config::Config;
use crate::data::deepfashion::{Split, SplitSummary};
use crate::printable::escape_controls;

pub fn run(config: &Config, args: &SplitsArgs) -> anyhow::Result<()> {
    let ds = super::open_dataset(config, &args.data)?;
    let protocol = args.gallery.unwrap_or(config.data.gallery);
    let summary = ds.summary(protocol);
    if args.json {
        crate::output::line(&crate::printable::json(&summary)?)?;
    } else {
        crate::output::text(&render_table(&summary))?;
    }
    Ok(())
}

/// The human-readable split table (also quoted in README).
pub fn render_table(s: &SplitSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<7} {:>8} {:>8} {:>10} {:>8}",
        "split", "pairs", "items", "consumer", "shop"
    );
    for split in Split::ALL {
        let _ = writeln!(
            out,
            "{:<7} {:>8} {:>8} {:>10} {:>8}",
            split.name(),
            s.pairs.get(split),
            s.items.get(split),
            s.consumer.get(split),
            s.shop.get(split)
        );
    }
    let _ = writeln!(
        out,
        "protocol {}: {} queries (test consumer images) vs {} gallery shop images",
        s.protocol, s.query, s.gallery
    );
    let _ = writeln!(
        out,
        "images listed: {}, missing on disk: {}, pairs skipped: {}",
        s.images, s.missing, s.dropped_pairs
    );
    let _ = writeln!(
        out,
        "\n{:<12} {:<16} {:>6} {:>6} {:>6} {:>6}",
        "category", "sub-category", "items", "train", "val", "test"
    );
    for c in &s.categories {
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:>6} {:>6} {:>6} {:>6}",
            escape_controls(&c.big),
            escape_controls(&c.small),
            c.items,
            c.per_split.train,
            c.per_split.val,
            c.per_split.test
        );
    }
    out
}
