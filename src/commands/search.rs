//! `vitrine search`: the nearest gallery images of a query image.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;

use crate::cli::SearchArgs;
use crate::config::Config;
use crate::data::loader::open_image;
use crate::index::{SearchHit, Searcher};
use crate::printable::escape_controls;

pub fn run(config: &Config, args: &SearchArgs) -> anyhow::Result<()> {
    if args.k == 0 {
        anyhow::bail!("--k must be at least 1");
    }
    let searcher = Searcher::open(&args.run, &args.checkpoint)
        .with_context(|| format!("opening the index of run {}", args.run.display()))?
        .with_settings(&config.index);
    let start = Instant::now();
    let query = searcher
        .embed_image(&args.image)
        .with_context(|| format!("query {}", args.image.display()))?;
    let hits = if args.exact {
        searcher.search_exact(&query, args.k)?
    } else {
        searcher.search_vector(&query, args.k)?
    };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let out = serde_json::json!({
            "query": args.image.display().to_string(),
            "k": args.k,
            "hits": hits.iter().map(|h| serde_json::json!({
                "rank": h.rank,
                "path": h.path,
                "score": h.score,
                "item_id": h.item_id,
                "category": h.category,
            })).collect::<Vec<_>>(),
            "ms": ms,
        });
        println!("{out}");
    } else {
        // Paths come from entries.json and the command line: escaped, never raw.
        println!(
            "{} nearest of {} gallery images to {} ({}, {ms:.1} ms):",
            hits.len(),
            searcher.len(),
            escape_controls(&args.image.display().to_string()),
            if args.exact {
                "exact scan"
            } else {
                "HNSW + re-rank"
            }
        );
        for h in &hits {
            println!(
                "{:>3}  {:.4}  {:<14} {:<22} {}",
                h.rank,
                h.score,
                escape_controls(&h.item_id),
                escape_controls(&h.category),
                escape_controls(&h.path)
            );
        }
    }
    if args.show {
        show(&args.image, &hits)?;
    }
    Ok(())
}

/// Thumbnails per row and their width in terminal columns.
const PER_ROW: usize = 5;
const COLS: u32 = 18;
const THUMB_PX: u32 = 96;

/// Prints the query and the hits as thumbnail rows (viuer: kitty/iTerm graphics where
/// the terminal has them, half blocks otherwise), rank and score under each.
fn show(query: &std::path::Path, hits: &[SearchHit]) -> anyhow::Result<()> {
    // open_image: a named pipe among the hits must not block the thumbnails.
    let open = |p: &std::path::Path| -> image::RgbImage {
        open_image(p)
            .ok()
            .and_then(|r| r.decode().ok())
            .map_or_else(
                || image::RgbImage::from_pixel(THUMB_PX, THUMB_PX, image::Rgb([60, 0, 0])),
                |img| img.thumbnail(THUMB_PX, THUMB_PX).into_rgb8(),
            )
    };
    let row = |imgs: &[image::RgbImage]| -> image::DynamicImage {
        let cell = THUMB_PX + 8;
        let mut canvas =
            image::RgbImage::from_pixel(cell * imgs.len() as u32, THUMB_PX, image::Rgb([0, 0, 0]));
        for (i, t) in imgs.iter().enumerate() {
            let x = i as u32 * cell + (THUMB_PX - t.width()) / 2;
            let y = (THUMB_PX - t.height()) / 2;
            image::imageops::overlay(&mut canvas, t, i64::from(x), i64::from(y));
        }
        image::DynamicImage::ImageRgb8(canvas)
    };
    let print = |img: &image::DynamicImage, n: usize| -> anyhow::Result<()> {
        let conf = viuer::Config {
            width: Some(COLS * n as u32),
            absolute_offset: false,
            ..Default::default()
        };
        viuer::print(img, &conf).context("printing thumbnails")?;
        Ok(())
    };
    println!("query: {}", escape_controls(&query.display().to_string()));
    print(&row(&[open(query)]), 1)?;
    for chunk in hits.chunks(PER_ROW) {
        let thumbs: Vec<_> = chunk
            .iter()
            .map(|h| open(std::path::Path::new(&h.path)))
            .collect();
        print(&row(&thumbs), chunk.len())?;
        let mut labels = String::new();
        for h in chunk {
            let label = format!("#{} {:.3}", h.rank, h.score);
            let _ = write!(labels, "{label:<width$}", width = COLS as usize);
        }
        println!("{}", labels.trim_end());
    }
    Ok(())
}
