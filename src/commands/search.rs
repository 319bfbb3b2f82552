//! `vitrine search`: the nearest gallery images of a query image.

use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use image::DynamicImage;
use ratatui::buffer::Buffer;
use ratatui::layout::{Rect, Size};
use ratatui::widgets::Widget;
use ratatui_image::picker::{Capability, Picker, ProtocolType};
use ratatui_image::{Image, Resize};

use crate::cli::SearchArgs;
use crate::config::{Config, ImageMode};
use crate::data::loader::open_image;
use crate::index::{SearchHit, Searcher};
use crate::printable::escape_controls;
use crate::tui::graphics::{self, Graphics, TerminalRestore};

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
        crate::output::line(&crate::printable::json(&out)?)?;
    } else {
        // Paths come from entries.json and the command line: escaped, never raw.
        crate::output::line(&format!(
            "{} nearest of {} gallery images to {} ({}, {ms:.1} ms):",
            hits.len(),
            searcher.len(),
            escape_controls(&args.image.display().to_string()),
            if args.exact {
                "exact scan"
            } else {
                "HNSW + re-rank"
            }
        ))?;
        for h in &hits {
            crate::output::line(&format!(
                "{:>3}  {:.4}  {:<14} {:<22} {}",
                h.rank,
                h.score,
                escape_controls(&h.item_id),
                escape_controls(&h.category),
                escape_controls(&h.path)
            ))?;
        }
    }
    if args.show {
        show(
            &args.image,
            &hits,
            args.image_mode.unwrap_or(config.ui.images),
        )?;
    }
    Ok(())
}

/// Preferred and largest thumbnail width in terminal columns, and the gap between two.
const THUMB_COLS: u16 = 16;
const MAX_THUMB_COLS: u16 = 24;
const GAP: u16 = 2;
/// Columns assumed when the terminal does not say.
const FALLBACK_COLS: u16 = 80;

/// Where `--show` puts thumbnails: as many per row as fit the terminal's width (rows
/// evened out), each `cols` × `rows` cells (square in pixels at the terminal's font).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grid {
    per_row: usize,
    cols: u16,
    rows: u16,
}

impl Grid {
    /// `n` thumbnails in `term_cols` columns, cells of `font` = (width, height) pixels.
    fn fit(term_cols: u16, n: usize, font: (u16, u16)) -> Self {
        let term_cols = term_cols.max(1);
        let preferred = THUMB_COLS.min(term_cols);
        let fit = usize::from(term_cols.saturating_add(GAP) / (preferred + GAP)).max(1);
        let lines = n.max(1).div_ceil(fit);
        let per_row = n.max(1).div_ceil(lines);
        let gaps = GAP * (per_row as u16 - 1);
        let cols = ((term_cols - gaps) / per_row as u16).clamp(1, MAX_THUMB_COLS);
        let (fw, fh) = (f64::from(font.0.max(1)), f64::from(font.1.max(1)));
        let rows = (f64::from(cols) * fw / fh).round().max(1.0) as u16;
        Self {
            per_row,
            cols,
            rows,
        }
    }

    /// Columns a row of `n` thumbnails spans.
    fn width(&self, n: usize) -> u16 {
        let n = n.max(1) as u16;
        n * self.cols + (n - 1) * GAP
    }

    /// Column where thumbnail `i` of a row starts.
    fn x(&self, i: usize) -> u16 {
        i as u16 * (self.cols + GAP)
    }
}

/// Two caption lines under a thumbnail (rank and score, ✓ on the query's item; the
/// item), cut to `width` columns.
fn caption(hit: &SearchHit, query_item: Option<&str>, width: u16) -> [String; 2] {
    let mark = if query_item == Some(hit.item_id.as_str()) {
        " ✓"
    } else {
        ""
    };
    [
        cut(&format!("#{} {:.3}{mark}", hit.rank, hit.score), width),
        cut(&escape_controls(&hit.item_id), width),
    ]
}

fn cut(s: &str, width: u16) -> String {
    s.chars().take(usize::from(width)).collect()
}

/// Caption lines of a row of thumbnails, each column padded to the grid.
fn caption_lines(grid: &Grid, captions: &[[String; 2]]) -> [String; 2] {
    let step = usize::from(grid.cols + GAP);
    [0, 1].map(|line| {
        let mut text = String::new();
        for c in captions {
            let used = c[line].chars().count();
            text.push_str(&c[line]);
            text.extend(std::iter::repeat_n(' ', step.saturating_sub(used)));
        }
        text.trim_end().to_string()
    })
}

/// The item a query belongs to: its folder (`…/id_00000123/comsumer_01.jpg`), as the
/// gallery's items are named.
fn item_of(query: &Path) -> Option<String> {
    query
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
}

/// How a row of thumbnails reaches the terminal.
enum Printer {
    /// viuer's own kitty or iTerm2 printer (one picture per row).
    Viuer { kitty: bool },
    /// ratatui-image's encoder for the picker's protocol, its cells printed inline.
    Cells,
}

impl Printer {
    /// viuer where it has the protocol the terminal answered with, else ratatui-image.
    /// viuer asks kitty support itself (cached): asked here, with echo off.
    fn choose(picker: &Picker) -> Self {
        match picker.protocol_type() {
            ProtocolType::Kitty
                if picker.capabilities().contains(&Capability::Kitty)
                    && graphics::quietly(viuer::get_kitty_support) != viuer::KittySupport::None =>
            {
                Printer::Viuer { kitty: true }
            }
            ProtocolType::Iterm2 if viuer::is_iterm_supported() => Printer::Viuer { kitty: false },
            _ => Printer::Cells,
        }
    }

    fn row(
        &self,
        out: &mut std::io::Stdout,
        picker: &Picker,
        grid: &Grid,
        thumbs: Vec<DynamicImage>,
    ) -> anyhow::Result<()> {
        let n = thumbs.len();
        match self {
            Printer::Viuer { kitty } => {
                let font = picker.font_size();
                let (fw, fh) = (u32::from(font.width.max(1)), u32::from(font.height.max(1)));
                let mut canvas =
                    image::RgbaImage::new(u32::from(grid.width(n)) * fw, u32::from(grid.rows) * fh);
                for (i, t) in thumbs.iter().enumerate() {
                    let x = u32::from(grid.x(i)) * fw
                        + (u32::from(grid.cols) * fw).saturating_sub(t.width()) / 2;
                    let y = (u32::from(grid.rows) * fh).saturating_sub(t.height()) / 2;
                    image::imageops::overlay(
                        &mut canvas,
                        &t.to_rgba8(),
                        i64::from(x),
                        i64::from(y),
                    );
                }
                out.flush()?;
                let conf = viuer::Config {
                    width: Some(u32::from(grid.width(n))),
                    height: Some(u32::from(grid.rows)),
                    absolute_offset: false,
                    transparent: true,
                    use_kitty: *kitty,
                    use_iterm: !*kitty,
                    ..Default::default()
                };
                viuer::print(&DynamicImage::ImageRgba8(canvas), &conf)
                    .context("printing thumbnails")?;
            }
            Printer::Cells => {
                let buf = cells(picker, grid, thumbs);
                graphics::write_inline(out, &buf).context("printing thumbnails")?;
            }
        }
        Ok(())
    }
}

/// A row of thumbnails drawn by ratatui-image into cells, each centred in its place.
fn cells(picker: &Picker, grid: &Grid, thumbs: Vec<DynamicImage>) -> Buffer {
    let mut buf = Buffer::empty(Rect::new(0, 0, grid.width(thumbs.len()), grid.rows));
    for (i, t) in thumbs.into_iter().enumerate() {
        match picker.new_protocol(t, Size::new(grid.cols, grid.rows), Resize::Fit(None)) {
            Ok(p) => {
                let size = p.size();
                let area = Rect::new(
                    grid.x(i) + grid.cols.saturating_sub(size.width) / 2,
                    grid.rows.saturating_sub(size.height) / 2,
                    size.width.min(grid.cols),
                    size.height.min(grid.rows),
                );
                Image::new(&p).render(area, &mut buf);
            }
            Err(e) => tracing::warn!("thumbnail {i} could not be encoded: {e}"),
        }
    }
    buf
}

/// Prints the query and the hits as rows of thumbnails that fit the terminal's width,
/// each with its rank, score and item under it (✓: the query's item), drawn the way
/// the dashboard draws them (`mode`, asked of the terminal under `auto`).
fn show(query: &Path, hits: &[SearchHit], mode: ImageMode) -> anyhow::Result<()> {
    // Never ask a terminal that is not there: a pipe would get the queries, and
    // nothing would answer.
    if !std::io::stdout().is_terminal() {
        eprintln!("--show: stdout is not a terminal, no thumbnails printed");
        return Ok(());
    }
    if mode == ImageMode::Off {
        eprintln!("--show: thumbnails are off (ui.images / --image-mode)");
        return Ok(());
    }
    // Put back as found, whatever happens below (errors, a query that timed out).
    let _restore = TerminalRestore::save();
    let Graphics { picker, label } = graphics::detect(mode);
    let Some(picker) = picker else {
        return Ok(());
    };
    let printer = Printer::choose(&picker);
    let term_cols = ratatui::crossterm::terminal::size()
        .map(|(c, _)| c)
        .ok()
        .filter(|&c| c > 0)
        .unwrap_or(FALLBACK_COLS);
    let font = picker.font_size();
    let grid = Grid::fit(term_cols, hits.len(), (font.width, font.height));
    tracing::info!("--show: {label}, {grid:?} in {term_cols} columns");
    let (px_w, px_h) = (
        u32::from(grid.cols) * u32::from(font.width.max(1)),
        u32::from(grid.rows) * u32::from(font.height.max(1)),
    );
    // open_image: a named pipe among the hits must not block the thumbnails.
    let open = |p: &Path| -> DynamicImage {
        open_image(p)
            .ok()
            .and_then(|r| r.decode().ok())
            .map_or_else(
                || {
                    DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                        8,
                        8,
                        image::Rgb([60, 0, 0]),
                    ))
                },
                |img| img.resize(px_w, px_h, image::imageops::FilterType::Triangle),
            )
    };
    let query_item = item_of(query);
    let mut out = std::io::stdout();
    printer.row(&mut out, &picker, &grid, vec![open(query)])?;
    let query_caption = [
        "query".to_string(),
        cut(
            &escape_controls(query_item.as_deref().unwrap_or("")),
            grid.cols,
        ),
    ];
    for line in caption_lines(&grid, &[query_caption]) {
        writeln!(out, "{line}")?;
    }
    for chunk in hits.chunks(grid.per_row) {
        let thumbs = chunk.iter().map(|h| open(Path::new(&h.path))).collect();
        printer.row(&mut out, &picker, &grid, thumbs)?;
        let captions: Vec<_> = chunk
            .iter()
            .map(|h| caption(h, query_item.as_deref(), grid.cols))
            .collect();
        for line in caption_lines(&grid, &captions) {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(rank: usize, item: &str) -> SearchHit {
        SearchHit {
            rank,
            id: rank,
            path: format!("/g/{item}/shop_01.jpg"),
            score: 0.9,
            item_id: item.into(),
            category: String::new(),
        }
    }

    #[test]
    fn twenty_hits_fill_the_width_in_even_rows() {
        for (cols, per_row) in [(80, 4), (100, 5), (120, 5), (200, 10), (30, 1)] {
            let g = Grid::fit(cols, 20, (10, 20));
            assert_eq!(g.per_row, per_row, "{cols} columns: {g:?}");
            assert!(g.width(g.per_row) <= cols, "{cols} columns: {g:?}");
            assert_eq!(20 % g.per_row, 0, "rows evened out at {cols}: {g:?}");
            assert!((THUMB_COLS..=MAX_THUMB_COLS).contains(&g.cols), "{g:?}");
        }
    }

    #[test]
    fn uneven_counts_are_spread_over_the_fewest_rows() {
        // 7 fit in 130 columns; 9 hits → 2 rows of 5 (not 7 + 2).
        let g = Grid::fit(130, 9, (10, 20));
        assert_eq!(g.per_row, 5);
        assert!(g.width(5) <= 130);
        // Fewer hits than fit: one row, thumbnails no wider than the largest.
        let g = Grid::fit(200, 3, (10, 20));
        assert_eq!((g.per_row, g.cols), (3, MAX_THUMB_COLS));
    }

    #[test]
    fn narrow_terminals_get_one_thumbnail_no_wider_than_the_screen() {
        for cols in [1, 5, 10, 17] {
            let g = Grid::fit(cols, 20, (10, 20));
            assert_eq!(g.per_row, 1, "{cols}: {g:?}");
            assert!(g.cols <= cols && g.cols >= 1, "{cols}: {g:?}");
            assert!(g.width(1) <= cols);
        }
    }

    #[test]
    fn thumbnails_are_square_in_pixels() {
        // 100 columns: 18 per thumbnail; 180 px wide at 10 × 20 px cells → 9 rows.
        assert_eq!(Grid::fit(100, 20, (10, 20)).rows, 9);
        assert_eq!(Grid::fit(100, 20, (8, 16)).rows, 9);
        assert_eq!(Grid::fit(100, 20, (9, 18)).rows, 9);
        assert_eq!(Grid::fit(100, 20, (7, 21)).rows, 6); // 18 × 7 / 21
    }

    #[test]
    fn captions_mark_the_query_item_and_line_up_under_thumbnails() {
        let g = Grid::fit(80, 20, (10, 20));
        let hits = [hit(1, "id_00000007"), hit(2, "id_00000042")];
        let caps: Vec<_> = hits
            .iter()
            .map(|h| caption(h, Some("id_00000042"), g.cols))
            .collect();
        assert_eq!(caps[0][0], "#1 0.900");
        assert_eq!(caps[1][0], "#2 0.900 ✓");
        let [first, second] = caption_lines(&g, &caps);
        let step = usize::from(g.cols + GAP);
        assert_eq!(first.chars().skip(step).collect::<String>(), "#2 0.900 ✓");
        assert!(second.starts_with("id_00000007"));
        assert_eq!(second.chars().skip(step).collect::<String>(), "id_00000042");
        // Cut to the thumbnail's width, control characters escaped.
        let long = hit(3, "a\x1b[2Jbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
        let [_, item] = caption(&long, None, 10);
        assert_eq!(item.chars().count(), 10);
        assert!(!item.contains('\x1b'));
    }

    #[test]
    fn the_query_item_is_its_folder() {
        assert_eq!(
            item_of(Path::new("img/TOPS/Tee/id_00000123/comsumer_01.jpg")).as_deref(),
            Some("id_00000123")
        );
        assert_eq!(item_of(Path::new("photo.jpg")), None);
    }
}
