use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Context;

use crate::cli::{TrainArgs, TrainOverrides};
use crate::config::Config;
use crate::data::sampler::SamplerKind;
use crate::output::{self, OutputError, note};
use crate::printable::{escape_controls, escape_lines};
use crate::progress::Progress;
use crate::run::folder::RunDir;
use crate::run::settings;
use crate::train::events::{RunStarted, TrainEvent, ValMetrics};
use crate::train::job::{Control, TrainJob};
use crate::train::trainer::train;

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
    if let Some(v) = o.batch {
        // The batch in the unit of the sampler the (final) loss and miner use.
        match c.sampler() {
            SamplerKind::Triplets => c.train.batch = v,
            _ => c.train.pk_items = v,
        }
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

/// The settings a run trains with: a new run takes the configuration (built-in
/// defaults and `--config`); a resumed one its own `RUN/config.toml`, which only
/// command-line flags change.
pub fn base_settings(config: &Config, run: &Path, resume: bool) -> anyhow::Result<Config> {
    if !resume {
        return Ok(config.clone());
    }
    settings::load(run).with_context(|| format!("cannot resume {}", run.display()))
}

pub fn run(config: &Config, config_file: Option<&Path>, args: &TrainArgs) -> anyhow::Result<()> {
    let run = if let Some(run) = &args.run {
        run.clone()
    } else {
        let run = config.train.run.clone();
        refuse_another_runs_config(config_file, &run)?;
        run
    };
    let base = base_settings(config, &run, args.resume)?;
    let mut config = apply_overrides(&base, &args.overrides)?;
    // The run's config.toml then names the dataset it trained on (`index`, `watch`).
    if let Some(data) = &args.data.data {
        config.data.root.clone_from(data);
    }
    config.data.strict |= args.data.strict;
    let job = TrainJob {
        data: config.data.root.clone(),
        run,
        resume: args.resume,
        config,
    };
    run_job(&job, args.json)
}

/// A run's own `config.toml` passed as `--config` names that run in `train.run`; one
/// copied from another run names the other one, which must not be written.
fn refuse_another_runs_config(config_file: Option<&Path>, run: &Path) -> anyhow::Result<()> {
    let Some(file) = config_file else {
        return Ok(());
    };
    let Some(folder) = file.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    }) else {
        return Ok(());
    };
    let is_run = file.file_name().is_some_and(|n| n == "config.toml")
        && RunDir::new(folder).metrics().is_file();
    let same = |a: &Path, b: &Path| {
        let canon =
            |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| crate::fsutil::absolute(p));
        canon(a) == canon(b)
    };
    if is_run && !same(folder, run) {
        anyhow::bail!(
            "{} is the settings file of run {}, but its train.run names {}: pass --run {} to train that run",
            file.display(),
            folder.display(),
            run.display(),
            folder.display()
        );
    }
    Ok(())
}

/// Runs a training job in the foreground; Ctrl-C (or SIGTERM), and a closed stdout
/// under `--json`, finish the current step, write a checkpoint and exit successfully.
pub fn run_job(job: &TrainJob, json: bool) -> anyhow::Result<()> {
    super::set_threads(job.config.train.threads);
    let control = Control::new();
    let flag = control.stop_flag();
    // A second handler in one process (tests) is refused; the first one still works.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let mut printer = EventPrinter::new(!json);
    let mut stdout_error: Option<OutputError> = None;
    let outcome = train(job, &control, &mut |event| {
        if !json {
            printer.print(event);
            return;
        }
        if stdout_error.is_some() {
            return;
        }
        let Ok(line) = crate::printable::json(event) else {
            return;
        };
        if let Err(e) = output::line(&line) {
            // Nobody reads the events any more: stop as Ctrl-C would.
            tracing::info!("{e}; stopping the run with a checkpoint");
            control.request_stop();
            stdout_error = Some(e);
        }
    })
    .with_context(|| format!("training run {}", job.run.display()))?;
    if !json {
        note(&format!(
            "run {}: {} at step {}; best val top-20 {}",
            escape_controls(&job.run.display().to_string()),
            outcome.reason.describe(),
            outcome.step,
            outcome
                .best_val_top20
                .map_or_else(|| "n/a".into(), |v| format!("{:.1}%", v * 100.0))
        ));
    }
    match stdout_error {
        Some(OutputError::Io(e)) => Err(OutputError::Io(e))
            .with_context(|| format!("training run {} stopped", job.run.display())),
        _ => Ok(()),
    }
}

/// Human-readable progress for a terminal or a log file.
struct EventPrinter {
    progress: Option<Progress>,
    enabled: bool,
    epochs: usize,
    /// Whether the run has val queries (an epoch without figures was not due one).
    validates: bool,
}

impl EventPrinter {
    fn new(enabled: bool) -> Self {
        Self {
            progress: None,
            enabled,
            epochs: 0,
            validates: false,
        }
    }

    fn print(&mut self, event: &TrainEvent) {
        if !self.enabled {
            return;
        }
        match event {
            TrainEvent::Started(started) => self.started(started),
            TrainEvent::Step { step, .. } => {
                if let Some(p) = &mut self.progress {
                    p.set(*step, &step_text(event));
                }
            }
            TrainEvent::Validated {
                step, val, seconds, ..
            } => note(&format!(
                "\nstopped at step {step}, validated: {} ({seconds:.0} s)",
                val_text(val)
            )),
            TrainEvent::Epoch {
                epoch,
                train_loss,
                val,
                seconds,
                ..
            } => {
                let val = if self.validates && !val.measured() {
                    "not validated (train.validations spreads validations over the run)".into()
                } else {
                    val_text(val)
                };
                let line = epoch_text(*epoch, self.epochs, *train_loss, &val);
                note(&format!("\n{line} ({seconds:.0} s)"));
            }
            TrainEvent::Baseline(val) => note(&format!("untrained: {}", val_text(val))),
            TrainEvent::Checkpoint { kind, path, .. } => {
                tracing::info!("checkpoint {kind:?} written to {path}");
            }
            TrainEvent::Notice { message, .. } => {
                note(&format!("\nnote: {}", escape_lines(message)));
            }
            TrainEvent::SettingsChanged { changes, .. } => {
                let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
                note(&format!(
                    "resumed with changed settings (recorded in metrics.jsonl): {}",
                    escape_controls(&list.join(", "))
                ));
            }
            TrainEvent::Done { .. } => {}
            // The error itself is reported once, by the caller.
            TrainEvent::Failed { .. } => {
                if self.progress.is_some() {
                    note("");
                }
            }
        }
    }

    /// The run's description, notes on its validation, device and weights; the
    /// progress bar from its first step.
    fn started(&mut self, s: &RunStarted) {
        self.epochs = s.epochs;
        self.validates = s.val_queries > 0;
        note(&started_text(s));
        // Validation reports top-1 and top-20.
        if let Some(saturation) = crate::eval::saturation_note(s.val_gallery, &[1, 20]) {
            note(&format!("note: validation: {saturation}"));
        }
        let info = s.device_info();
        if !info.name.is_empty() {
            note(&format!(
                "device {}: {}",
                text(&s.device),
                text(&info.summary())
            ));
        }
        if let Some(w) = &s.pretrained {
            note(&format!(
                "weights: {} backbone tensors from {} ({})",
                w.tensors,
                text(&w.source),
                text(&w.file)
            ));
        }
        let mut p = Progress::new("train", s.total_steps, true);
        p.set(s.start_step, "");
        self.progress = Some(p);
    }
}

/// Settings and paths come from files and the command line: escaped.
fn text(s: &str) -> String {
    escape_controls(s).into_owned()
}

/// The line a run starts with: what trains on what, how, and which steps.
fn started_text(s: &RunStarted) -> String {
    let RunStarted {
        batch,
        train_triplets,
        ..
    } = s;
    let batches = if s.sampler == "pk" {
        format!(
            "{train_triplets} items/epoch in P×K batches of {batch} items × {} images",
            s.batch_images / (*batch).max(1)
        )
    } else {
        format!("{train_triplets} triplets/epoch in batches of {batch}")
    };
    let loss = if s.loss == "triplet" {
        format!("triplet loss, {} mining", s.mining)
    } else {
        format!("{} loss", s.loss)
    };
    format!(
        "training {}: {} at {} px on {}, {} trainable parameters, {}, {}, \
         val {} queries vs {} gallery; steps {}..{} (warming up)",
        text(&s.run),
        text(&s.backbone),
        s.image_size,
        text(&s.device),
        s.trainable_params,
        text(&batches),
        text(&loss),
        s.val_queries,
        s.val_gallery,
        s.start_step,
        s.total_steps,
    )
}

/// A step's figures beside the progress bar.
fn step_text(event: &TrainEvent) -> String {
    let TrainEvent::Step {
        epoch,
        loss,
        active,
        spread,
        images_per_s,
        ..
    } = event
    else {
        return String::new();
    };
    format!(
        "epoch {} loss {loss:.4} active {:.0}% cos {:.2} {:.0} img/s",
        epoch + 1,
        active * 100.0,
        spread.unwrap_or(f32::NAN),
        images_per_s.unwrap_or(f32::NAN),
    )
}

/// An epoch's line; `epoch` counts from 0 as in the events, people count from 1. A
/// NaN train loss is an epoch that had no step left to train (resumed at its end).
fn epoch_text(epoch: usize, epochs: usize, train_loss: f32, val: &str) -> String {
    let loss = if train_loss.is_finite() {
        format!("{train_loss:.4}")
    } else {
        "—".to_string()
    };
    format!("epoch {}/{epochs}: train loss {loss}, {val}", epoch + 1)
}

/// A validation's figures. The val loss needs a val query whose item has a shop image
/// and whose small category has another item in the val gallery; without one, say so.
fn val_text(val: &ValMetrics) -> String {
    let ValMetrics {
        val_loss: loss,
        val_top1: top1,
        val_top20: top20,
        val_map_at_r: map_at_r,
    } = *val;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_counts_the_samplers_unit() {
        let config = Config::default();
        let batch = TrainOverrides {
            batch: Some(6),
            ..TrainOverrides::default()
        };
        // P×K (the default sampler): items per batch.
        let pk = apply_overrides(&config, &batch).expect("valid");
        assert_eq!((pk.train.pk_items, pk.train.batch), (6, config.train.batch));
        // The original's triplets: triplets per batch.
        let triplets = apply_overrides(
            &config,
            &TrainOverrides {
                mining: Some(crate::model::Mining::Offline),
                ..batch
            },
        )
        .expect("valid");
        assert_eq!(
            (triplets.train.batch, triplets.train.pk_items),
            (6, config.train.pk_items)
        );
    }

    #[test]
    fn the_first_line_says_what_trains_how() {
        let started: RunStarted = serde_json::from_value(serde_json::json!({
            "run": "r\u{1b}", "device": "cpu", "backbone": "resnet18", "image_size": 64,
            "batch": 8, "epochs": 5, "steps_per_epoch": 10, "total_steps": 50,
            "start_step": 20, "resumed": true, "mining": "batch_hard", "sampler": "pk",
            "batch_images": 32, "params": 2, "trainable_params": 1, "train_triplets": 80,
            "val_queries": 9, "val_gallery": 7, "time": 0.0,
        }))
        .expect("a started event");
        assert_eq!(
            started_text(&started),
            "training r\\x1b: resnet18 at 64 px on cpu, 1 trainable parameters, \
             80 items/epoch in P×K batches of 8 items × 4 images, \
             triplet loss, batch_hard mining, val 9 queries vs 7 gallery; \
             steps 20..50 (warming up)"
        );
        let triplets = RunStarted {
            sampler: "triplets".into(),
            loss: "norm_softmax".into(),
            ..started
        };
        assert!(
            started_text(&triplets)
                .contains(", 80 triplets/epoch in batches of 8, norm_softmax loss, val 9"),
            "{}",
            started_text(&triplets)
        );
    }

    #[test]
    fn an_epoch_without_steps_prints_a_dash() {
        assert_eq!(
            epoch_text(0, 10, f32::NAN, "val …"),
            "epoch 1/10: train loss —, val …"
        );
        assert_eq!(
            epoch_text(2, 10, 0.25, "val …"),
            "epoch 3/10: train loss 0.2500, val …"
        );
    }
}
