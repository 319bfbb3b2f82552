mod common;

use std::path::Path;

use vitrine::data::deepfashion::{Dataset, LoadOptions, Source, Split};
use vitrine::data::loader::LoaderConfig;
use vitrine::model::checkpoint;
use vitrine::model::{Embedder, Precision};
use vitrine::run::folder::CheckpointKind;
use vitrine::run::folder::{ControlRequest, RunDir};
use vitrine::train::error::TrainError;
use vitrine::train::events::{RunStarted, StopReason, TrainEvent, ValMetrics};
use vitrine::train::job::{Control, TrainJob, TrainOutcome};
use vitrine::train::metrics_log::read_all;
use vitrine::train::resume::read_meta;
use vitrine::train::trainer::train;
use vitrine::train::validation::validate;

fn job(data: &Path, run: &Path, config: vitrine::config::Config) -> TrainJob {
    TrainJob {
        config,
        data: data.to_path_buf(),
        run: run.to_path_buf(),
        resume: false,
    }
}

fn run_collect(
    job: &TrainJob,
    control: &Control,
) -> (Result<TrainOutcome, TrainError>, Vec<TrainEvent>) {
    let mut events = Vec::new();
    let r = train(job, control, &mut |e| events.push(e.clone()));
    (r, events)
}

/// Trains `cfg` (4 epochs, 150 synthetic items at 32 px) and asserts that it learned:
/// the training loss falls by a tenth and val top-20 beats the untrained model's.
fn assert_learns(cfg: vitrine::config::Config, run: &Path) -> (TrainJob, Vec<TrainEvent>) {
    let data = common::synth_dataset(150, 64);
    let mut cfg = cfg;
    cfg.train.epochs = 4;
    // About 45 steps at 32 px: the default rotation, shrink and inversion (chosen for
    // 10-minute runs across artists) slow the first steps on garments; what this test
    // checks is that the trainer learns.
    cfg.augment.rotate = 0.0;
    cfg.augment.shrink = 0.0;
    cfg.augment.invert = 0.0;
    let job = job(&data, run, cfg);
    let (result, events) = run_collect(&job, &Control::new());
    let outcome = result.expect("train");
    assert_eq!(outcome.reason, StopReason::Finished);
    let baseline = events
        .iter()
        .find_map(|e| match e {
            TrainEvent::Baseline(ValMetrics {
                val_top20,
                val_map_at_r,
                ..
            }) => Some((*val_top20, *val_map_at_r)),
            _ => None,
        })
        .expect("baseline event");
    let last = events
        .iter()
        .rev()
        .find_map(|e| match e {
            TrainEvent::Epoch {
                val:
                    ValMetrics {
                        val_top20,
                        val_map_at_r,
                        ..
                    },
                train_loss,
                ..
            } => Some((*val_top20, *val_map_at_r, *train_loss)),
            _ => None,
        })
        .expect("epoch event");
    let losses: Vec<f32> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    let n = losses.len() / 4;
    let first: f32 = losses[..n].iter().sum::<f32>() / n as f32;
    let final_: f32 = losses[losses.len() - n..].iter().sum::<f32>() / n as f32;
    assert!(
        final_ < first * 0.9,
        "loss should go down: {first} -> {final_}"
    );
    assert!(
        last.0 > baseline.0,
        "val top-20 must beat the untrained model: {} vs {}",
        last.0,
        baseline.0
    );
    (job, events)
}

/// bf16 forwards and bf16 gradient GEMMs (on AMX tiles where they run) still learn.
#[test]
fn bf16_trains_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.model.precision = Precision::Bf16;
    assert_learns(cfg, &tmp.path().join("run"));
}

#[test]
fn training_beats_the_untrained_model_on_val() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (job, events) = assert_learns(common::tiny_train_config(), &tmp.path().join("run"));
    // The metrics log holds the same events, in order, readable by another process.
    let logged = read_all(&RunDir::new(&job.run).metrics()).expect("metrics");
    assert!(
        logged == events,
        "metrics.jsonl differs from the events emitted"
    );
    // Checkpoints exist with sidecars; the lock is released.
    let run = RunDir::new(&job.run);
    for kind in [CheckpointKind::Last, CheckpointKind::Best] {
        assert!(run.checkpoint(kind).is_file());
        assert!(read_meta(&run.checkpoint(kind)).is_ok());
    }
    assert_eq!(run.locked_by(), None);
    assert!(run.config().is_file());
}

#[test]
fn checkpoints_reload_to_identical_embeddings() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.max_steps = 2;
    let job = job(&data, &tmp.path().join("run"), cfg.clone());
    run_collect(&job, &Control::new()).0.expect("train");
    let last = RunDir::new(&job.run).checkpoint(CheckpointKind::Last);
    let ds = Dataset::open(&data, LoadOptions::default()).expect("open");
    let loader = LoaderConfig {
        size: 32,
        crop: true,
        workers: 1,
        prefetch: 1,
        max_pixels: 1_000_000,
    };
    let q = ds.queries(Split::Val);
    let g = ds.unique_images(&[Split::Val], Source::Shop);
    let mut results = Vec::new();
    for seed in [1, 2] {
        let (model, varmap) =
            Embedder::seeded(cfg.model.embedder(), &candle_core::Device::Cpu, seed).expect("model");
        checkpoint::load_full(&varmap, &last).expect("load");
        let meta = read_meta(&last).expect("meta");
        assert_eq!(
            checkpoint::fingerprint(&varmap).expect("fp"),
            meta.fingerprint
        );
        let r = validate(&model, &ds, &q, &g, loader, &candle_core::Device::Cpu, 0.5)
            .expect("validate")
            .expect("val");
        results.push(r.0);
    }
    assert_eq!(
        results[0], results[1],
        "same weights, same retrieval whatever the init seed"
    );
}

#[test]
fn resume_continues_exactly_where_it_stopped() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.batch = 8;
    cfg.train.epochs = 2;
    cfg.train.max_steps = 5;
    // Dropout masks come from the seeded stream, so they replay on resume too.
    cfg.model.dropout = 0.3;
    // Straight through: 5 steps.
    let straight = job(&data, &tmp.path().join("straight"), cfg.clone());
    let (r, events_a) = run_collect(&straight, &Control::new());
    assert_eq!(r.expect("train").step, 5);
    // Interrupted after 3 steps, then resumed to 5.
    let mut first = cfg.clone();
    first.train.max_steps = 3;
    let split = job(&data, &tmp.path().join("split"), first);
    assert_eq!(
        run_collect(&split, &Control::new()).0.expect("train").step,
        3
    );
    // Without --resume an existing run is refused rather than overwritten.
    let again = job(&data, &split.run, cfg.clone());
    let log_before = std::fs::read(RunDir::new(&split.run).metrics()).expect("metrics");
    assert!(matches!(
        run_collect(&again, &Control::new()).0,
        Err(TrainError::Resume { .. })
    ));
    assert_eq!(
        std::fs::read(RunDir::new(&split.run).metrics()).expect("metrics"),
        log_before,
        "a refused start leaves the run's log untouched"
    );
    let mut resumed = again;
    resumed.resume = true;
    let (r, events_b) = run_collect(&resumed, &Control::new());
    assert_eq!(r.expect("resume").step, 5);
    match &events_b[0] {
        TrainEvent::Started(RunStarted {
            start_step,
            resumed,
            device,
            device_name,
            device_detail,
            device_memory_bytes,
            ..
        }) => {
            assert_eq!(*start_step, 3);
            assert!(*resumed);
            // The device is described, not only named.
            assert_eq!(device, "cpu");
            assert!(!device_name.is_empty());
            assert!(device_detail.contains("threads"), "{device_detail}");
            if cfg!(target_os = "linux") {
                assert!(*device_memory_bytes > 0);
            }
        }
        other => panic!("first event {other:?}"),
    }
    let steps = |ev: &[TrainEvent]| -> Vec<(usize, f32)> {
        ev.iter()
            .filter_map(|e| match e {
                TrainEvent::Step { step, loss, .. } => Some((*step, *loss)),
                _ => None,
            })
            .collect()
    };
    let a = steps(&events_a);
    let b = steps(&events_b);
    assert_eq!(b.iter().map(|s| s.0).collect::<Vec<_>>(), vec![4, 5]);
    for ((sa, la), (sb, lb)) in a[3..].iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            (la - lb).abs() < 1e-4,
            "step {sa}: {la} vs {lb} (optimizer state and sampler position restored)"
        );
    }
    let fa = read_meta(&RunDir::new(&straight.run).checkpoint(CheckpointKind::Last)).expect("meta");
    let fb = read_meta(&RunDir::new(&resumed.run).checkpoint(CheckpointKind::Last)).expect("meta");
    assert_eq!(fa.step, fb.step);
}

#[test]
fn a_stop_request_finishes_the_step_and_checkpoints() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let job = job(&data, &tmp.path().join("run"), common::tiny_train_config());
    let control = Control::new();
    let c2 = control.clone();
    let mut events = Vec::new();
    let outcome = train(&job, &control, &mut |e| {
        if let TrainEvent::Step { step: 2, .. } = e {
            c2.request_stop();
        }
        events.push(e.clone());
    })
    .expect("interrupted run still succeeds");
    assert_eq!(outcome.reason, StopReason::Interrupted);
    assert_eq!(outcome.step, 2);
    let last = RunDir::new(&job.run).checkpoint(CheckpointKind::Last);
    assert_eq!(read_meta(&last).expect("meta").step, 2);
    assert!(matches!(
        events.last(),
        Some(TrainEvent::Done {
            reason: StopReason::Interrupted,
            ..
        })
    ));

    // Another process stops a run through its control file.
    let job2 = TrainJob {
        run: tmp.path().join("run2"),
        ..job.clone()
    };
    let run2 = RunDir::new(&job2.run);
    let outcome = train(&job2, &Control::new(), &mut |e| {
        if let TrainEvent::Step { step: 1, .. } = e {
            run2.send_control(ControlRequest::Stop).expect("control");
        }
    })
    .expect("stopped run");
    assert_eq!((outcome.reason, outcome.step), (StopReason::Interrupted, 1));
    assert!(
        !run2.control().exists(),
        "the request is consumed when the trainer exits"
    );
}

#[test]
fn a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.lr = 1e36;
    cfg.train.checkpoint_every = 1;
    let job = job(&data, &tmp.path().join("run"), cfg.clone());
    let (result, events) = run_collect(&job, &Control::new());
    let err = result.expect_err("must stop");
    assert!(matches!(err, TrainError::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("last good checkpoint"));
    assert!(matches!(events.last(), Some(TrainEvent::Failed { .. })));
    let last = RunDir::new(&job.run).checkpoint(CheckpointKind::Last);
    let meta = read_meta(&last).expect("meta");
    let TrainError::NonFinite { step, .. } = err else {
        unreachable!()
    };
    assert_eq!(meta.step, step, "the checkpoint is the last finite step");
    let (_, varmap) =
        Embedder::seeded(cfg.model.embedder(), &candle_core::Device::Cpu, 0).expect("model");
    checkpoint::load_full(&varmap, &last).expect("the kept checkpoint loads");
    assert!(err.to_string().contains("last.safetensors"), "{err}");

    // Before any checkpoint exists, the message promises none.
    cfg.train.checkpoint_every = 0;
    let fresh = TrainJob {
        run: tmp.path().join("fresh"),
        config: cfg,
        ..job
    };
    let (result, _) = run_collect(&fresh, &Control::new());
    let msg = result.expect_err("must stop").to_string();
    assert!(
        msg.contains("before any checkpoint was written") && !msg.contains("is kept"),
        "{msg}"
    );
    assert!(
        !RunDir::new(&fresh.run)
            .checkpoint(CheckpointKind::Last)
            .exists()
    );
}

#[test]
fn bad_pretrained_weights_are_a_listed_error_and_runs_are_locked() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("wrong.safetensors");
    let t = candle_core::Tensor::zeros((3, 3), candle_core::DType::F32, &candle_core::Device::Cpu)
        .expect("t");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("conv1.weight".to_string(), t)]),
        &bad,
    )
    .expect("save");
    let mut cfg = common::tiny_train_config();
    cfg.model.pretrained = bad;
    let (result, _) = run_collect(&job(&data, &tmp.path().join("run"), cfg), &Control::new());
    let msg = result.expect_err("mismatch").to_string();
    assert!(
        msg.contains("mis-shaped") && msg.contains("conv1.weight") && msg.contains("missing"),
        "{msg}"
    );

    // A live process holding the lock keeps other trainers out (flock(1) holds the
    // same OS lock vitrine takes).
    let run = RunDir::new(&tmp.path().join("locked"));
    run.create().expect("create");
    let lock = run.root.join("lock");
    std::fs::write(&lock, "").expect("lock file");
    let mut child = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1), from util-linux");
    std::fs::write(&lock, child.id().to_string()).expect("pid");
    while run.locked_by().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (result, _) = run_collect(
        &job(&data, &run.root, common::tiny_train_config()),
        &Control::new(),
    );
    let msg = result.expect_err("locked").to_string();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        msg.contains("another trainer") && msg.contains(&child.id().to_string()),
        "{msg}"
    );
}

fn validated(events: &[TrainEvent]) -> Option<(usize, f64)> {
    events.iter().find_map(|e| match e {
        TrainEvent::Validated { step, val, .. } => Some((*step, val.val_top20)),
        _ => None,
    })
}

#[test]
fn a_time_limit_stops_with_a_validation_and_checkpoints() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.epochs = 10_000;
    // Room for a step beside the reserve (a validation, a step, two writes) on a
    // loaded machine.
    cfg.train.time_limit = "5s".into();
    let job = job(&data, &tmp.path().join("run"), cfg);
    let (result, events) = run_collect(&job, &Control::new());
    let outcome = result.expect("a time limit is a normal end");
    assert_eq!(outcome.reason, StopReason::TimeLimit);
    assert!(outcome.step > 0);
    // It validated where it stopped (unless an epoch had just ended there), so best
    // exists and holds that step or an earlier epoch's.
    let epoch_end = events.iter().rev().find_map(|e| match e {
        TrainEvent::Epoch { step, .. } => Some(*step),
        _ => None,
    });
    if epoch_end != Some(outcome.step) {
        assert_eq!(validated(&events).map(|v| v.0), Some(outcome.step));
    }
    let run = RunDir::new(&job.run);
    assert_eq!(
        read_meta(&run.checkpoint(CheckpointKind::Last))
            .expect("last")
            .step,
        outcome.step
    );
    assert!(read_meta(&run.checkpoint(CheckpointKind::Best)).is_ok());
    match events.last() {
        Some(TrainEvent::Done {
            reason: StopReason::TimeLimit,
            best_val_top20,
            ..
        }) => assert!(best_val_top20.is_finite()),
        other => panic!("last event {other:?}"),
    }
}

#[test]
fn index_works_right_after_a_max_steps_run() {
    use vitrine::index::CheckpointChoice;
    use vitrine::index::build::{Gallery, IndexJob, build};
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.max_steps = 3;
    cfg.train.epochs = 50;
    let job = job(&data, &tmp.path().join("run"), cfg.clone());
    let (result, events) = run_collect(&job, &Control::new());
    assert_eq!(result.expect("train").reason, StopReason::MaxSteps);
    assert_eq!(validated(&events).map(|v| v.0), Some(3));
    let index = |run: &Path| {
        build(
            &IndexJob {
                run: run.to_path_buf(),
                checkpoint: CheckpointChoice::Auto,
                gallery: Gallery::Dataset {
                    root: data.clone(),
                    protocol: vitrine::data::deepfashion::GalleryProtocol::Test,
                },
                settings: cfg.index.clone(),
                data: cfg.data.clone(),
            },
            &mut |_, _| {},
        )
        .map_err(|e| e.to_string())
    };
    let report = index(&job.run).expect("index right after a short run");
    assert!(report.count > 0);
    assert!(
        report.checkpoint.ends_with("best.safetensors"),
        "{report:?}"
    );

    // A dataset without a val split never validates: no best, and `auto` takes last.
    // Its epoch ends with val figures of none (`null`), which `runs` shows as "—".
    let noval = tmp.path().join("noval");
    common::copy_dir(&data, &noval);
    let partition = noval.join("Eval/list_eval_partition.txt");
    let text = std::fs::read_to_string(&partition).expect("read");
    std::fs::write(&partition, text.replace(" val\n", " train\n")).expect("write");
    let mut one_epoch = cfg.clone();
    one_epoch.train.max_steps = 0;
    one_epoch.train.epochs = 1;
    let job = TrainJob {
        data: noval.clone(),
        ..self::job(&noval, &tmp.path().join("runs/noval"), one_epoch)
    };
    let (result, events) = run_collect(&job, &Control::new());
    result.expect("train");
    assert!(validated(&events).is_none());
    let epoch = events
        .iter()
        .find(|e| matches!(e, TrainEvent::Epoch { .. }))
        .expect("an epoch ended");
    let json = serde_json::to_value(epoch).expect("json");
    for key in ["val_top1", "val_top20", "val_map_at_r"] {
        assert!(json[key].is_null(), "{key}: {json}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["runs", "--dir"])
        .arg(tmp.path().join("runs"))
        .output()
        .expect("vitrine runs");
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("noval")).expect("row");
    assert!(row.contains('—') && !row.contains('%'), "{table}");
    match events.last() {
        Some(TrainEvent::Done { best_val_top20, .. }) => assert!(best_val_top20.is_nan()),
        other => panic!("{other:?}"),
    }
    assert!(
        !RunDir::new(&job.run)
            .checkpoint(CheckpointKind::Best)
            .exists()
    );
    let report = index(&job.run).expect("index from last");
    assert!(
        report.checkpoint.ends_with("last.safetensors"),
        "{report:?}"
    );
}

#[test]
fn timm_style_pretrained_weights_load_and_frozen_stages_keep_them() {
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    // "ImageNet" weights: another seed's backbone under torchvision/timm names, with
    // the classifier (fc.*) and BatchNorm counters (i64) that such files carry.
    let mut cfg = common::tiny_train_config();
    let (_, donor) = Embedder::seeded(cfg.model.embedder(), &Device::Cpu, 99).expect("donor");
    let mut tensors: HashMap<String, Tensor> = donor
        .data()
        .lock()
        .expect("lock")
        .iter()
        .filter(|(name, _)| !name.starts_with("head.") && !name.starts_with("neck."))
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    tensors.insert(
        "fc.weight".into(),
        Tensor::zeros((1000, 512), DType::F32, &Device::Cpu).expect("fc"),
    );
    tensors.insert(
        "fc.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).expect("fc"),
    );
    tensors.insert(
        "bn1.num_batches_tracked".into(),
        Tensor::new(&[7i64], &Device::Cpu)
            .expect("count")
            .squeeze(0)
            .expect("scalar"),
    );
    let file = tmp.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &file).expect("save");

    cfg.model.pretrained = file;
    cfg.model.train_from_stage = 5;
    cfg.model.bnneck = true;
    cfg.train.max_steps = 3;
    let job = job(&data, &tmp.path().join("run"), cfg.clone());
    run_collect(&job, &Control::new())
        .0
        .expect("train from pretrained");
    let (_, trained) = Embedder::seeded(cfg.model.embedder(), &Device::Cpu, 0).expect("model");
    checkpoint::load_full(
        &trained,
        &RunDir::new(&job.run).checkpoint(CheckpointKind::Last),
    )
    .expect("load");
    let get = |name: &str| -> Vec<f32> {
        trained.data().lock().expect("lock")[name]
            .as_tensor()
            .flatten_all()
            .expect("flat")
            .to_vec1()
            .expect("values")
    };
    let file_values = |name: &str| -> Vec<f32> {
        tensors[name]
            .flatten_all()
            .expect("flat")
            .to_vec1()
            .expect("values")
    };
    // Frozen stages hold the file's weights and statistics, exactly.
    for name in [
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer3.1.bn2.running_var",
    ] {
        assert_eq!(get(name), file_values(name), "{name}");
    }
    // layer4 trained away from them; the head and BNNeck exist.
    assert_ne!(
        get("layer4.1.conv2.weight"),
        file_values("layer4.1.conv2.weight")
    );
    assert_eq!(get("neck.weight").len(), 512);
}

#[test]
fn a_train_split_smaller_than_one_batch_trains_instead_of_panicking() {
    let data = common::synth_dataset(12, 32);
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, sampler) in [("pk", "pk"), ("triplets", "triplets")] {
        let mut cfg = common::tiny_train_config();
        cfg.train.pk_items = 64;
        cfg.train.batch = 64;
        cfg.train.sampler = match sampler {
            "pk" => vitrine::data::sampler::SamplerKind::Pk,
            _ => vitrine::data::sampler::SamplerKind::Triplets,
        };
        if sampler == "triplets" {
            cfg.loss.kind = vitrine::model::LossKind::Triplet;
        }
        let job = job(&data, &tmp.path().join(name), cfg);
        let (result, events) = run_collect(&job, &Control::new());
        let outcome = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(outcome.step, 1, "{name}: one short batch per epoch");
        assert!(
            matches!(events.last(), Some(TrainEvent::Done { .. })),
            "{name}"
        );
    }
}

#[test]
fn settings_that_cannot_be_saved_are_refused_before_the_run_is_touched() {
    use std::os::unix::ffi::OsStrExt;
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    // Not UTF-8: TOML cannot hold it.
    cfg.model.pretrained = tmp
        .path()
        .join(std::ffi::OsStr::from_bytes(b"weights-\xff.safetensors"));
    let job = job(&data, &tmp.path().join("run"), cfg);
    let (result, events) = run_collect(&job, &Control::new());
    let msg = result.expect_err("refused").to_string();
    assert!(
        msg.contains("config.toml") && msg.contains("UTF-8"),
        "{msg}"
    );
    assert!(events.is_empty());
    let run = RunDir::new(&job.run);
    assert!(!run.config().exists() && !run.metrics().exists());
}

fn steps_of(events: &[TrainEvent]) -> Vec<(usize, usize, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step {
                step, epoch, lr, ..
            } => Some((*step, *epoch, *lr)),
            _ => None,
        })
        .collect()
}

/// Issue 25 item 5: the step limit is checked before the first step, so a run resumed
/// at its limit trains (and validates) no more.
#[test]
fn a_run_resumed_at_its_max_steps_does_no_step() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.max_steps = 2;
    cfg.train.epochs = 5;
    let first = job(&data, &tmp.path().join("run"), cfg);
    assert_eq!(
        run_collect(&first, &Control::new()).0.expect("train").step,
        2
    );
    let resumed = TrainJob {
        resume: true,
        ..first.clone()
    };
    let (r, events) = run_collect(&resumed, &Control::new());
    let outcome = r.expect("resume");
    assert_eq!((outcome.reason, outcome.step), (StopReason::MaxSteps, 2));
    assert!(steps_of(&events).is_empty(), "{events:?}");
    assert!(
        !events.iter().any(|e| matches!(
            e,
            TrainEvent::Validated { .. } | TrainEvent::Epoch { .. } | TrainEvent::Checkpoint { .. }
        )),
        "it validated and wrote at step 2 already: {events:?}"
    );
}

/// Issue 25 item 11: one convention, from 0, in every event and sidecar; a run resumed
/// after an epoch's end goes on with the next epoch.
#[test]
fn epochs_count_from_zero_in_events_and_checkpoints() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.epochs = 2;
    let first = job(&data, &tmp.path().join("run"), cfg.clone());
    let (r, events) = run_collect(&first, &Control::new());
    assert_eq!(r.expect("train").reason, StopReason::Finished);
    let ends: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Epoch { epoch, step, .. } => Some((*epoch, *step)),
            _ => None,
        })
        .collect();
    assert_eq!(ends.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1]);
    for e in &events {
        match e {
            TrainEvent::Checkpoint { epoch, step, .. } => {
                let end = ends.iter().find(|end| end.1 == *step).expect("epoch end");
                assert_eq!(*epoch, end.0, "checkpoint at step {step}");
            }
            TrainEvent::Step { epoch, step, .. } => assert!(*epoch <= 1, "step {step}"),
            TrainEvent::Done { epoch, .. } => assert_eq!(*epoch, 1),
            _ => {}
        }
    }
    let run = RunDir::new(&first.run);
    let best = read_meta(&run.checkpoint(CheckpointKind::Best)).expect("best.json");
    assert!(ends.contains(&(best.epoch, best.step)), "{best:?}");
    let last = read_meta(&run.checkpoint(CheckpointKind::Last)).expect("last.json");
    assert_eq!((last.epoch, last.epoch_done), (1, true));
    // A third epoch: it starts at epoch 2, with nothing of epoch 1 redone.
    let mut more = cfg;
    more.train.epochs = 3;
    let resumed = TrainJob {
        config: more,
        resume: true,
        ..first.clone()
    };
    let (r, events) = run_collect(&resumed, &Control::new());
    r.expect("resume");
    let steps = steps_of(&events);
    assert!(
        !steps.is_empty() && steps.iter().all(|s| s.1 == 2),
        "{steps:?}"
    );
    assert_eq!(steps[0].0, ends[1].1 + 1);
}

/// Issue 22 item 7: the time budget, the elapsed time, the schedule position and the
/// reserve are in the checkpoint: a run stopped early and resumed continues the
/// schedule (no restart at full learning rate) and the seconds it spent, and a run
/// resumed with its budget spent trains no more.
#[test]
fn a_time_limited_run_resumed_continues_its_budget() {
    use vitrine::train::resume::Carried;
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.epochs = 10_000;
    cfg.train.time_limit = "10m".into();
    cfg.train.warmup_steps = 0;
    let first = job(&data, &tmp.path().join("run"), cfg);
    let last = RunDir::new(&first.run).checkpoint(CheckpointKind::Last);
    let budget = || Carried::of(&read_meta(&last).expect("meta")).budget;
    // Stopped (as Ctrl-C stops it) after `steps` steps of this process.
    let stopped_after = |job: &TrainJob, step: usize| {
        let control = Control::new();
        let stop = control.clone();
        let mut events = Vec::new();
        let outcome = train(job, &control, &mut |e| {
            if matches!(e, TrainEvent::Step { step: s, .. } if *s == step) {
                stop.request_stop();
            }
            events.push(e.clone());
        })
        .expect("train");
        (outcome, events)
    };
    let (outcome, events) = stopped_after(&first, 2);
    assert_eq!(outcome.reason, StopReason::Interrupted);
    let (_, _, lr_before) = *steps_of(&events).last().expect("steps");
    let spent = budget();
    assert!(
        spent.elapsed_s > 0.0 && spent.validation_s > 0.0 && spent.step_s > 0.0,
        "{spent:?}"
    );
    assert!(spent.checkpoint_s > 0.0 && spent.schedule_progress > 0.0);

    let resumed = TrainJob {
        resume: true,
        ..first.clone()
    };
    let (outcome, events) = stopped_after(&resumed, 3);
    assert_eq!(outcome.step, 3);
    let (_, _, lr_after) = *steps_of(&events).first().expect("a step after the resume");
    assert!(
        lr_after <= lr_before,
        "the schedule restarted: lr {lr_before} at step 2, {lr_after} at step 3"
    );
    let later = budget();
    assert!(
        later.elapsed_s > spent.elapsed_s && later.schedule_progress >= spent.schedule_progress,
        "the budget restarted: {spent:?} then {later:?}"
    );

    // A checkpoint whose budget is spent but for the end's reserve: no more steps,
    // the run ends at once on its time limit.
    let sidecar = vitrine::run::checkpoints::sidecar_path(&last);
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).expect("read")).expect("json");
    meta["trainer"]["budget"]["elapsed_s"] = serde_json::json!(600.0 - later.reserve_s());
    std::fs::write(&sidecar, serde_json::to_vec(&meta).expect("json")).expect("write");
    let (r, events) = run_collect(&resumed, &Control::new());
    let outcome = r.expect("resume");
    assert_eq!((outcome.reason, outcome.step), (StopReason::TimeLimit, 3));
    assert!(steps_of(&events).is_empty(), "{events:?}");
}

/// Issue 25 items 2 and 3: the saved settings name this run and its dataset by
/// absolute paths, never the configured `train.run`.
#[test]
fn a_run_saves_its_own_paths() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.max_steps = 1;
    cfg.train.run = "runs/demo".into();
    cfg.data.root = "d".into();
    let run = tmp.path().join("t4");
    let (r, _) = run_collect(&job(&data, &run, cfg), &Control::new());
    r.expect("train");
    let saved = vitrine::run::settings::load(&run).expect("config.toml");
    assert_eq!(saved.train.run, run);
    assert_eq!(saved.data.root, data);
    assert!(saved.train.run.is_absolute() && saved.data.root.is_absolute());
}

/// Issue 25 item 8 (and 2): a dataset that cannot be read leaves no run folder
/// behind, and logs nothing into an existing run resumed on it.
#[test]
fn a_dataset_that_cannot_be_read_leaves_no_run() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.max_steps = 1;
    let run = tmp.path().join("t4");
    run_collect(&job(&data, &run, cfg.clone()), &Control::new())
        .0
        .expect("train");
    let missing = tmp.path().join("no-such-data");
    let fresh = tmp.path().join("fresh");
    let (r, events) = run_collect(&job(&missing, &fresh, cfg.clone()), &Control::new());
    assert!(matches!(r, Err(TrainError::Dataset(_))), "{r:?}");
    assert!(
        events.is_empty() && !fresh.exists(),
        "a run folder was made"
    );
    // Nor is a failure logged into an existing run resumed on a mistyped --data.
    let log_before = std::fs::read(RunDir::new(&run).metrics()).expect("metrics");
    let resumed = TrainJob {
        data: missing,
        resume: true,
        ..job(&data, &run, cfg)
    };
    assert!(run_collect(&resumed, &Control::new()).0.is_err());
    assert_eq!(
        std::fs::read(RunDir::new(&run).metrics()).expect("metrics"),
        log_before
    );
}

/// Issue 22 item 8: the collapse monitor is carried in the checkpoint; a resumed run
/// says again that it is collapsing, so the dashboard (which drops an earlier
/// process's warning on `started`) shows the state of this one.
#[test]
fn a_collapse_in_progress_is_carried_over_a_resume() {
    use vitrine::train::collapse::{CollapseMonitor, StepSignals, WINDOW};
    use vitrine::train::events::NoticeKind;
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.max_steps = 1;
    let first = job(&data, &tmp.path().join("run"), cfg.clone());
    run_collect(&first, &Control::new()).0.expect("train");
    // The sidecar as a run that collapsed before its checkpoint would have written it.
    let mut monitor = CollapseMonitor::default();
    for _ in 0..WINDOW {
        monitor.observe(StepSignals {
            spread: 0.99,
            d_ap: 0.1,
            d_an: 0.1,
            loss: 0.5,
            margin: None,
        });
    }
    let sidecar = vitrine::run::checkpoints::sidecar_path(
        &RunDir::new(&first.run).checkpoint(CheckpointKind::Last),
    );
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).expect("read")).expect("json");
    meta["trainer"]["collapse"] = serde_json::to_value(&monitor).expect("monitor");
    std::fs::write(&sidecar, serde_json::to_vec(&meta).expect("json")).expect("write");
    let mut more = cfg;
    more.train.max_steps = 2;
    let resumed = TrainJob {
        config: more,
        resume: true,
        ..first.clone()
    };
    let (r, events) = run_collect(&resumed, &Control::new());
    r.expect("resume");
    let warned = events.iter().position(|e| {
        matches!(
            e,
            TrainEvent::Notice {
                kind: Some(NoticeKind::Collapse),
                ..
            }
        )
    });
    let first_step = events
        .iter()
        .position(|e| matches!(e, TrainEvent::Step { .. }));
    assert!(
        warned.is_some() && warned < first_step,
        "no collapse notice at the start: {events:?}"
    );
}

#[test]
fn validations_are_spread_over_the_run_and_it_still_ends_validated() {
    let data = common::synth_dataset(60, 64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.epochs = 8;
    cfg.train.validations = 2;
    let job = job(&data, &tmp.path().join("run"), cfg.clone());
    let (result, events) = run_collect(&job, &Control::new());
    let outcome = result.expect("train");
    let epochs: Vec<(usize, bool)> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Epoch { step, val, .. } => Some((*step, val.measured())),
            _ => None,
        })
        .collect();
    assert_eq!(epochs.len(), 8);
    let n_validated = epochs.iter().filter(|e| e.1).count();
    // Once half the steps have passed: about twice, not at each of the 8 epochs.
    assert!((1..=3).contains(&n_validated), "{epochs:?}");
    // The run still validates where it stops, so `best` exists.
    let final_validated =
        epochs.last().is_some_and(|e| e.1) || validated(&events).map(|v| v.0) == Some(outcome.step);
    assert!(final_validated, "{epochs:?}");
    let run = RunDir::new(&job.run);
    assert!(read_meta(&run.checkpoint(CheckpointKind::Best)).is_ok());

    // `validations = 0` validates every epoch.
    cfg.train.validations = 0;
    let job = self::job(&data, &tmp.path().join("every"), cfg);
    let (result, events) = run_collect(&job, &Control::new());
    result.expect("train");
    let every = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Epoch { val, .. } if val.measured()))
        .count();
    assert_eq!(every, 8);
}

#[test]
fn the_weight_average_takes_each_step_once() {
    let data = common::synth_dataset(60, 32);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::tiny_train_config();
    cfg.train.max_steps = 1;
    cfg.train.ema = 0.9;
    let job = job(&data, &tmp.path().join("run"), cfg.clone());
    let (result, _) = run_collect(&job, &Control::new());
    result.expect("train");
    let cpu = candle_core::Device::Cpu;
    let run = RunDir::new(&job.run);
    // The checkpoint holds the average, last.optim the live weights after step 1.
    let average = candle_core::safetensors::load(run.checkpoint(CheckpointKind::Last), &cpu)
        .expect("checkpoint");
    let live = candle_core::safetensors::load(run.optimizer_state(), &cpu).expect("optim");
    let (_, init) = Embedder::seeded(cfg.model.embedder(), &cpu, cfg.train.seed).expect("init");
    let init = init.data().lock().expect("varmap");
    // One update after step 1: avg = w0 + (1 − d)(w1 − w0), d = min(ema, 2/11).
    let d = 0.9f64.min(2.0 / 11.0);
    let mut checked = 0;
    for (name, var) in init.iter() {
        let (Some(avg), Some(w1)) = (average.get(name), live.get(&format!("live.{name}"))) else {
            continue;
        };
        let w0 = var.as_tensor();
        let moved = (w1 - w0).expect("sub").abs().expect("abs");
        let moved = moved
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        if moved < 1e-4 {
            continue;
        }
        let want = (w0
            + (w1 - w0)
                .expect("sub")
                .affine(1.0 - d, 0.0)
                .expect("affine"))
        .expect("add");
        let err = (avg - want).expect("sub").abs().expect("abs");
        let err = err
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!(
            err < 1e-5 * (1.0 + moved),
            "{name}: off by {err} (moved {moved})"
        );
        checked += 1;
    }
    assert!(checked > 0, "no weight moved in the step");
}
