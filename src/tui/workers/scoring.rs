//! Scores the Triplets tab's rows under the run's newest checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{Outbox, spawn};
use crate::config::Config;
use crate::data::loader::{ImageSpec, LoaderConfig};
use crate::model::Embedder;
use crate::model::checkpoint;
use crate::run::CheckpointKind;
use crate::run::folder::RunDir;
use crate::run::settings;
use crate::tui::app::WorkerEvent;
use crate::tui::tabs::dataset::{ImageInfo, TripletRow};
use crate::tui::tabs::triplets::TripletScore;

/// Scores triplet rows with the run's newest checkpoint (`last`), or the untrained
/// weights when it has none: unit embeddings, Euclidean d(a,p), d(a,n) and
/// the triplet loss of the run's settings. Partial results are sent as they come.
pub fn spawn_scorer(run: PathBuf, config: Config, rows: Vec<TripletRow>, out: Outbox) {
    spawn(
        "score",
        &out.clone(),
        WorkerEvent::ScoresFailed,
        move || {
            if let Err(e) = score(&run, &config, &rows, &out) {
                tracing::warn!("triplet scoring: {e}");
                out.send(WorkerEvent::ScoresFailed(e));
            }
        },
    );
}

fn score(run: &Path, fallback: &Config, rows: &[TripletRow], out: &Outbox) -> Result<(), String> {
    let cfg = settings::load_or_fallback(run, fallback);
    let device = Device::Cpu;
    let (model, varmap) = Embedder::seeded(cfg.model.embedder(), &device, cfg.train.seed)
        .map_err(|e| e.to_string())?;
    let last = RunDir::new(run).checkpoint(CheckpointKind::Last);
    let weights = if last.is_file() {
        checkpoint::load_full(&varmap, &last).map_err(|e| e.to_string())?;
        match crate::train::resume::read_meta(&last) {
            Ok(meta) => format!("checkpoint last (step {})", meta.step),
            Err(_) => "checkpoint last".to_string(),
        }
    } else {
        "untrained weights (no checkpoint yet)".to_string()
    };
    let loader = LoaderConfig {
        size: cfg.model.image_size,
        crop: cfg.data.crop,
        workers: 1,
        prefetch: 1,
        max_pixels: cfg.data.max_image_pixels,
    };
    // The trainer's own triplet hinge (margin or soft margin).
    let triplet = crate::model::TripletLoss {
        margin: cfg.loss.margin,
        mining: cfg.loss.mining,
        soft_margin: cfg.loss.soft_margin,
    };
    let mut vectors: HashMap<PathBuf, Option<Vec<f32>>> = HashMap::new();
    let total = rows.len();
    for (chunk_no, chunk) in rows.chunks(32).enumerate() {
        let mut specs: Vec<ImageSpec> = Vec::new();
        for r in chunk {
            for img in [&r.anchor, &r.positive, &r.negative] {
                if !vectors.contains_key(&img.path) && !specs.iter().any(|s| s.path == img.path) {
                    specs.push(ImageSpec {
                        path: img.path.clone(),
                        bbox: img.bbox,
                    });
                }
            }
        }
        if !specs.is_empty() {
            let embedded = crate::model::embed_files::embed_images(
                &model,
                &specs,
                loader,
                16,
                &device,
                &mut |_, _| {},
            )
            .map_err(|e| e.to_string())?;
            let rows_v: Vec<Vec<f32>> = embedded.vectors.to_vec2().map_err(|e| e.to_string())?;
            for s in &specs {
                vectors.insert(s.path.clone(), None);
            }
            for (v, &k) in rows_v.into_iter().zip(&embedded.kept) {
                vectors.insert(specs[k].path.clone(), Some(v));
            }
        }
        let base = chunk_no * 32;
        let scores: Vec<(usize, TripletScore)> = chunk
            .iter()
            .enumerate()
            .filter_map(|(j, r)| {
                let get = |i: &ImageInfo| vectors.get(&i.path).and_then(Option::as_ref);
                let (a, p, n) = (get(&r.anchor)?, get(&r.positive)?, get(&r.negative)?);
                let d_ap = euclid(a, p);
                let d_an = euclid(a, n);
                Some((
                    base + j,
                    TripletScore {
                        d_ap,
                        d_an,
                        loss: triplet.of_distances(d_ap, d_an),
                    },
                ))
            })
            .collect();
        let done = (base + chunk.len()).min(total);
        if !out.send(WorkerEvent::Scores {
            weights: weights.clone(),
            scores,
            done,
            total,
        }) {
            return Ok(());
        }
    }
    Ok(())
}

fn euclid(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}
