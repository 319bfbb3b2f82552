use std::sync::atomic::Ordering;

use anyhow::Context;

use crate::cli::{TrainArgs, TrainOverrides};
use crate::config::Config;
use crate::printable::{escape_controls, escape_lines};
use crate::progress::Progress;
use crate::train::events::TrainEvent;
use crate::train::trainer::{Control, TrainJob, train};

/// Applies `--backbone`, `--epochs`… over the config, re-validating the result.
pub fn apply_overrides(config: &Config, o: &TrainOverrides) -> anyhow::Result<Config> {
    let mut c = config.clone();
    if let Some(v) = o.backbone {
        c.model.backbone = v;
    }
    if let Some(v) = o.image_size {
        c.model.image_size = v;
    }
    if let Some(v) = o.epochs {
        c.train.epochs = v;
    }
    if let Some(v) = o.batch {
        c.train.batch = v;
    }
    if let Some(v) = o.max_steps {
        c.train.max_steps = v;
    }
    if let Some(v) = o.lr {
        c.train.lr = v;
    }
    if let Some(v) = o.loss {
        c.loss.kind = v;
    }
    if let Some(v) = o.mining {
        // Asking for a miner asks for the loss it belongs to.
        c.loss.kind = crate::model::LossKind::Triplet;
        c.loss.mining = v;
    }
    if let Some(v) = &o.time_limit {
        c.train.time_limit.clone_from(v);
    }
    if let Some(v) = &o.device {
        c.train.device.clone_from(v);
    }
    if let Some(v) = o.seed {
        c.train.seed = v;
    }
    if let Some(v) = &o.pretrained {
        c.model.pretrained.clone_from(v);
    }
    c.validate()
        .map_err(|(key, reason)| anyhow::anyhow!("command-line value for `{key}`: {reason}"))?;
    Ok(c)
}

pub fn run(config: &Config, args: &TrainArgs) -> anyhow::Result<()> {
    let mut config = apply_overrides(config, &args.overrides)?;
    // The run's config.toml then names the dataset it trained on (`vitrine watch`).
    if let Some(data) = &args.data.data {
        config.data.root.clone_from(data);
    }
    let job = TrainJob {
        data: config.data.root.clone(),
        run: args.run.clone().unwrap_or_else(|| config.train.run.clone()),
        resume: args.resume,
        config,
    };
    run_job(&job, args.json)
}

/// Runs a training job in the foreground; Ctrl-C (or SIGTERM) finishes the current
/// step, writes a checkpoint and exits successfully.
pub fn run_job(job: &TrainJob, json: bool) -> anyhow::Result<()> {
    super::set_threads(job.config.train.threads);
    let control = Control::new();
    let flag = control.stop_flag();
    // A second handler in one process (tests) is refused; the first one still works.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let mut printer = EventPrinter::new(!json);
    let outcome = train(job, &control, &mut |event| {
        if json {
            if let Ok(line) = crate::printable::json(event) {
                println!("{line}");
            }
        } else {
            printer.print(event);
        }
    })
    .with_context(|| format!("training run {}", job.run.display()))?;
    if !json {
        eprintln!(
            "run {}: {} at step {}; best val top-20 {}",
            escape_controls(&job.run.display().to_string()),
            outcome.reason.describe(),
            outcome.step,
            outcome
                .best_val_top20
                .map_or_else(|| "n/a".into(), |v| format!("{:.1}%", v * 100.0))
        );
    }
    Ok(())
}

/// Human-readable progress for a terminal or a log file.
struct EventPrinter {
    progress: Option<Progress>,
    enabled: bool,
    epochs: usize,
}

impl EventPrinter {
    fn new(enabled: bool) -> Self {
        Self {
            progress: None,
            enabled,
            epochs: 0,
        }
    }

    fn print(&mut self, event: &TrainEvent) {
        if !self.enabled {
            return;
        }
        match event {
            TrainEvent::Started {
                run,
                device,
                backbone,
                image_size,
                batch,
                batch_images,
                total_steps,
                start_step,
                train_triplets,
                val_queries,
                val_gallery,
                trainable_params,
                epochs,
                loss,
                mining,
                sampler,
                pretrained,
                ..
            } => {
                self.epochs = *epochs;
                let batches = if sampler == "pk" {
                    format!(
                        "{train_triplets} items/epoch in P×K batches of {batch} items × {} images",
                        batch_images / (*batch).max(1)
                    )
                } else {
                    format!("{train_triplets} triplets/epoch in batches of {batch}")
                };
                let loss = if loss == "triplet" {
                    format!("triplet loss, {mining} mining")
                } else {
                    format!("{loss} loss")
                };
                // Settings and paths come from files and the command line: escaped.
                let text = |s: &str| escape_controls(s).into_owned();
                eprintln!(
                    "training {}: {} at {image_size} px on {}, {trainable_params} trainable parameters, \
                     {}, {}, val {val_queries} queries vs {val_gallery} gallery; \
                     steps {start_step}..{total_steps} (warming up)",
                    text(run),
                    text(backbone),
                    text(device),
                    text(&batches),
                    text(&loss),
                );
                // Validation reports top-1 and top-20.
                if let Some(note) = crate::eval::saturation_note(*val_gallery, &[1, 20]) {
                    eprintln!("note: validation: {note}");
                }
                let info = event.device_info().unwrap_or_default();
                if !info.name.is_empty() {
                    eprintln!("device {}: {}", text(device), text(&info.summary()));
                }
                if let Some(w) = pretrained {
                    eprintln!(
                        "weights: {} backbone tensors from {} ({})",
                        w.tensors, w.source, w.file
                    );
                }
                let mut p = Progress::new("train", *total_steps, true);
                p.set(*start_step, "");
                self.progress = Some(p);
            }
            TrainEvent::Step {
                step,
                epoch,
                loss,
                active,
                spread,
                images_per_s,
                ..
            } => {
                if let Some(p) = &mut self.progress {
                    p.set(
                        *step,
                        &format!(
                            "epoch {} loss {loss:.4} active {:.0}% cos {:.2} {:.0} img/s",
                            epoch + 1,
                            active * 100.0,
                            spread.unwrap_or(f32::NAN),
                            images_per_s.unwrap_or(f32::NAN),
                        ),
                    );
                }
            }
            TrainEvent::Validated {
                step,
                val_loss,
                val_top1,
                val_top20,
                val_map_at_r,
                seconds,
                ..
            } => eprintln!(
                "\nstopped at step {step}, validated: {} ({seconds:.0} s)",
                val_text(*val_loss, *val_top1, *val_top20, *val_map_at_r)
            ),
            TrainEvent::Epoch {
                epoch,
                train_loss,
                val_loss,
                val_top1,
                val_top20,
                val_map_at_r,
                seconds,
                ..
            } => eprintln!(
                "\nepoch {}/{}: train loss {train_loss:.4}, {} ({seconds:.0} s)",
                epoch + 1,
                self.epochs,
                val_text(*val_loss, *val_top1, *val_top20, *val_map_at_r)
            ),
            TrainEvent::Baseline {
                val_loss,
                val_top1,
                val_top20,
                val_map_at_r,
            } => eprintln!(
                "untrained: {}",
                val_text(*val_loss, *val_top1, *val_top20, *val_map_at_r)
            ),
            TrainEvent::Checkpoint { kind, path, .. } => {
                tracing::info!("checkpoint {kind:?} written to {path}");
            }
            TrainEvent::Notice { message, .. } => {
                eprintln!("\nnote: {}", escape_lines(message));
            }
            TrainEvent::Done { .. } => {}
            // The error itself is reported once, by the caller.
            TrainEvent::Failed { .. } => {
                if self.progress.is_some() {
                    eprintln!();
                }
            }
        }
    }
}

/// A validation's figures. The val loss needs a val query whose item has a shop image
/// and whose small category has another item in the val gallery; without one, say so.
fn val_text(loss: f32, top1: f64, top20: f64, map_at_r: f64) -> String {
    if !(top1.is_finite() && top20.is_finite()) {
        return "no validation (the dataset has no val split)".into();
    }
    let loss = if loss.is_finite() {
        format!("val loss {loss:.4}")
    } else {
        "no val loss (no val query has both its item's shop image and another item of its category)"
            .to_string()
    };
    format!(
        "{loss}, val top-1 {:.1}%, top-20 {:.1}%, MAP@R {map_at_r:.3}",
        top1 * 100.0,
        top20 * 100.0
    )
}
