//! Writing the layout: every item's JPEG images, then the annotation lists.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;

use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;

use crate::data::deepfashion::{
    BBOX_FILE, BBOX_HEADER, ITEM_FILE, PARTITION_FILE, PARTITION_HEADER,
};
use crate::fsutil::write_atomic;
use crate::rng::Rng;

use super::garment::{KINDS, build_garment};
use super::plan::{ItemPlan, KIND_CONSUMER, KIND_GARMENT, KIND_SHOP, item_name};
use super::render::render;
use super::view::{consumer_view, shop_view};
use super::{CATEGORIES, SynthError, SynthOptions, io_err};

/// The images written for one item: relative path and bbox `[x1, y1, x2, y2)`.
pub(super) struct ItemImages {
    pub(super) consumer: Vec<(String, [u32; 4])>,
    pub(super) shop: Vec<(String, [u32; 4])>,
}

pub(super) fn write_item(
    opts: &SynthOptions,
    plan: &ItemPlan,
    out: &Path,
) -> Result<ItemImages, SynthError> {
    let kind = KINDS[plan.category];
    let id = plan.id as u64;
    let garment = build_garment(kind, &mut Rng::derive(opts.seed, &[id, 0, KIND_GARMENT]));
    let rel_dir = plan.dir();
    let dir = out.join(&rel_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut names = HashSet::new();
    let mut emit = |file: String, rng: &mut Rng, consumer: bool| {
        let view = if consumer {
            consumer_view(&garment, rng)
        } else {
            shop_view(&garment, rng)
        };
        let path = dir.join(&file);
        let (pixels, bbox) = render(&garment, &view, opts.size, rng);
        let mut bytes = Vec::with_capacity(pixels.len() / 6);
        JpegEncoder::new_with_quality(&mut bytes, view.quality)
            .encode(&pixels, opts.size, opts.size, ExtendedColorType::Rgb8)
            .map_err(|source| SynthError::Encode {
                path: path.clone(),
                source,
            })?;
        std::fs::write(&path, &bytes).map_err(io_err(&path))?;
        let rel = format!("{rel_dir}/{file}");
        names.insert(file);
        Ok::<_, SynthError>((rel, bbox))
    };
    let mut consumer = Vec::with_capacity(plan.consumers);
    for n in 1..=plan.consumers {
        let mut rng = Rng::derive(opts.seed, &[id, n as u64, KIND_CONSUMER]);
        consumer.push(emit(format!("comsumer_{n:02}.jpg"), &mut rng, true)?);
    }
    let mut shop = Vec::with_capacity(plan.shops);
    for n in 1..=plan.shops {
        let mut rng = Rng::derive(opts.seed, &[id, n as u64, KIND_SHOP]);
        shop.push(emit(format!("shop_{n:02}.jpg"), &mut rng, false)?);
    }
    remove_stale(&dir, &names)?;
    Ok(ItemImages { consumer, shop })
}

/// Removes images of an earlier, different run from an item folder we just wrote,
/// so the folder holds exactly the listed images (only `comsumer_*.jpg`/`shop_*.jpg`).
fn remove_stale(dir: &Path, keep: &HashSet<String>) -> Result<(), SynthError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_image_name(name) && !keep.contains(name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// `comsumer_NN.jpg` or `shop_NN.jpg`, the names this generator writes.
fn is_image_name(name: &str) -> bool {
    let rest = name
        .strip_prefix("comsumer_")
        .or_else(|| name.strip_prefix("shop_"))
        .map(str::as_bytes);
    matches!(rest, Some([a, b, b'.', b'j', b'p', b'g']) if a.is_ascii_digit() && b.is_ascii_digit())
}

pub(super) fn write_lists(
    out: &Path,
    plans: &[ItemPlan],
    written: &[ItemImages],
    pairs: usize,
    images: usize,
) -> Result<(), SynthError> {
    let path = out.join(PARTITION_FILE);
    write_atomic(&path, |w| {
        writeln!(w, "{pairs}")?;
        writeln!(w, "{PARTITION_HEADER}")?;
        for (plan, imgs) in plans.iter().zip(written) {
            let item = item_name(plan.id);
            for (c, _) in &imgs.consumer {
                for (s, _) in &imgs.shop {
                    writeln!(w, "{c} {s} {item} {}", plan.split.name())?;
                }
            }
        }
        Ok(())
    })
    .map_err(io_err(&path))?;

    let path = out.join(BBOX_FILE);
    write_atomic(&path, |w| {
        writeln!(w, "{images}")?;
        writeln!(w, "{BBOX_HEADER}")?;
        for (plan, imgs) in plans.iter().zip(written) {
            let clothes = CATEGORIES[plan.category].clothes_type;
            let rows = imgs
                .consumer
                .iter()
                .map(|r| (r, 2))
                .chain(imgs.shop.iter().map(|r| (r, 1)));
            for ((p, b), source) in rows {
                writeln!(
                    w,
                    "{p} {clothes} {source} {} {} {} {}",
                    b[0], b[1], b[2], b[3]
                )?;
            }
        }
        Ok(())
    })
    .map_err(io_err(&path))?;

    let path = out.join(ITEM_FILE);
    write_atomic(&path, |w| {
        writeln!(w, "{}", plans.len())?;
        writeln!(w, "item_id")?;
        for plan in plans {
            writeln!(w, "{}", item_name(plan.id))?;
        }
        Ok(())
    })
    .map_err(io_err(&path))
}
