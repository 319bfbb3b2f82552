use std::time::Instant;

use anyhow::{Context, bail};

use candle_core::{DType, Tensor};

use crate::cli::{BenchCommand, BenchLoadArgs, BenchModelArgs};
use crate::config::Config;
use crate::data::loader::{LoaderConfig, Prefetcher};
use crate::model::{Criterion, Embedder, LossConfig, LossKind, Mining, Precision};
use crate::run::device::{self, parse_device};
use crate::train::step::{Optimisers, Phases, StepSettings, train_step};

pub fn run(config: &Config, cmd: &BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Load(args) => load(config, args),
        BenchCommand::Train(args) => train(config, args),
        BenchCommand::Embed(args) => embed(config, args),
        BenchCommand::Search(args) => search(config, args),
        BenchCommand::Vectors(args) => vectors(args),
    }
}

/// `bench search`: index build, exact scan and HNSW + re-rank sweeps on .npy vectors.
fn search(config: &Config, args: &crate::cli::BenchSearchArgs) -> anyhow::Result<()> {
    use crate::index::benchmark::{self, SearchBench};
    use crate::index::hnsw::GraphParams;
    use crate::index::npy;
    let base = npy::load(&args.base)?;
    let queries = npy::load(&args.queries)?;
    // The loader refuses 0-d vectors; an empty matrix is valid .npy but nothing to time.
    for (m, path) in [(&base, &args.base), (&queries, &args.queries)] {
        if m.rows == 0 {
            bail!(
                "{} holds no vectors (shape (0, {})): bench search needs at least one row",
                path.display(),
                m.cols
            );
        }
    }
    let opts = SearchBench {
        k: args.k,
        params: GraphParams {
            m: args.m.unwrap_or(config.index.m),
            ef_construction: args.ef_construction.unwrap_or(config.index.ef_construction),
        },
        efs: args.ef.clone(),
        exact_queries: args.exact_queries,
        hnsw_rs: args.hnsw_rs,
        targets: {
            let mut t: Vec<f64> = benchmark::TARGETS.to_vec();
            if !t.contains(&config.index.target_recall) {
                t.push(config.index.target_recall);
            }
            t.sort_by(f64::total_cmp);
            t
        },
        index_target: config.index.target_recall,
        builder: args.builder.unwrap_or(config.index.builder),
    };
    let json = args.json;
    // Resolved before the (long) in-process part: a bad URL fails at once.
    let pg = match args.backend {
        Some(crate::config::IndexBackend::Postgres) => Some(crate::index::backend::pg_target(
            &config.index,
            args.pg_url.as_deref(),
            Some(&args.table),
        )?),
        _ => None,
    };
    let report = benchmark::run(&base, &queries, &opts, &mut |line| {
        if !json {
            eprintln!("{line}");
        }
    })
    .with_context(|| {
        format!(
            "benchmarking {} against {}",
            args.queries.display(),
            args.base.display()
        )
    })?;
    let pg_report = match &pg {
        Some(target) => Some(
            postgres_bench(target, &base, &queries, &opts, &report, json)
                .with_context(|| format!("benchmarking {} in {}", target.table, target.url))?,
        ),
        None => None,
    };
    if json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(p) = &pg_report {
            value["postgres"] = serde_json::to_value(p)?;
        }
        crate::output::line(&crate::printable::json(&value)?)?;
    } else {
        crate::output::line(&format!(
            "n {} dim {} queries {} k {} (m {}, ef_construction {}, {} threads): build {:.2} s ({}), exact scan {:.0} q/s ({:.0} q/s on all threads{})",
            report.n,
            report.dim,
            report.queries,
            report.k,
            report.m,
            report.ef_construction,
            report.threads,
            report.build_s,
            report.builder,
            report.exact_qps,
            report.exact_qps_all_threads,
            report.read_bandwidth.map_or(String::new(), |b| format!(
                ", {:.0}% of the read bandwidth {:.1} GB/s",
                100.0 * report.exact_gb_per_s_all_threads / b.all_threads_gb_per_s.max(1e-9),
                b.all_threads_gb_per_s
            ))
        ))?;
        if let Some(p) = &pg_report {
            crate::output::line(&format!(
                "postgres: {} at {} ({}): load {:.2} s (binary COPY), HNSW build {:.2} s (m {}, ef_construction {})",
                p.table, p.url, p.server, p.load_s, p.build_s, p.m, p.ef_construction
            ))?;
        }
        crate::output::line(&format!(
            "{:<8} {:>6} {:>9} {:>10} {:>14} {:>8} {:>8}",
            "engine",
            "ef",
            "shortlist",
            format!("recall@{}", report.k),
            "q/s (1 client)",
            "p50 ms",
            "p99 ms"
        ))?;
        let pg_runs = pg_report.iter().flat_map(|p| &p.runs);
        for r in report.runs.iter().chain(pg_runs) {
            crate::output::line(&format!(
                "{:<8} {:>6} {:>9} {:>10.4} {:>14.0} {:>8.3} {:>8.3}",
                r.engine, r.ef, r.shortlist, r.recall_at_k, r.qps, r.p50_ms, r.p99_ms
            ))?;
        }
        for f in &report.first_ef {
            crate::output::line(&match f.ef {
                Some(ef) => format!(
                    "first beam reaching recall@{} {}: ef {ef} ({:.4})",
                    report.k,
                    f.target,
                    f.recall_at_k.unwrap_or(f64::NAN)
                ),
                None => format!("no beam measured reaches recall@{} {}", report.k, f.target),
            })?;
        }
        let c = &report.index_ef;
        crate::output::line(&format!(
            "`vitrine index` would choose ef {} (recall@{} {:.4} on {} base vectors as queries; target {}, index.target_recall)",
            c.ef, c.k, c.recall, c.sample, c.target
        ))?;
    }
    Ok(())
}

/// The PostgreSQL half of `bench search --backend postgres`: same vectors, same
/// exact truth, same beam widths.
fn postgres_bench(
    target: &crate::index::postgres::PgTarget,
    base: &crate::index::npy::Matrix,
    queries: &crate::index::npy::Matrix,
    opts: &crate::index::benchmark::SearchBench,
    report: &crate::index::benchmark::SearchBenchReport,
    json: bool,
) -> anyhow::Result<crate::index::postgres::bench::PgBenchReport> {
    use crate::index::benchmark::{default_efs, normalized};
    let (base, queries) = (normalized(base), normalized(queries));
    let dev = candle_core::Device::Cpu;
    let tensor =
        |m: &crate::index::npy::Matrix| Tensor::from_slice(&m.data, (m.rows, m.cols), &dev);
    let truth: Vec<Vec<usize>> =
        crate::eval::exact_top_k(&tensor(&queries)?, &tensor(&base)?, report.k)?
            .into_iter()
            .map(|hits| hits.into_iter().map(|h| h.index).collect())
            .collect();
    let efs = if opts.efs.is_empty() {
        default_efs(report.k)
    } else {
        opts.efs.clone()
    };
    Ok(crate::index::postgres::bench::run(
        target,
        &base,
        &queries,
        &truth,
        report.k,
        &efs,
        (opts.params.m, opts.params.ef_construction),
        &mut |line| {
            if !json {
                eprintln!("{line}");
            }
        },
    )?)
}

/// Most `f32` values `bench vectors` makes in one matrix (4 GiB).
const MAX_VECTOR_VALUES: usize = 1 << 30;

/// `bench vectors`: clustered unit vectors as .npy.
fn vectors(args: &crate::cli::BenchVectorsArgs) -> anyhow::Result<()> {
    use crate::index::clustered::{ClusterSpec, vectors};
    use crate::index::npy;
    if args.n == 0 || args.dim == 0 || args.clusters == 0 {
        bail!("--n, --dim and --clusters must be at least 1");
    }
    // Each flag has a range; their product is the allocation.
    let most = args.n.max(args.queries);
    if most
        .checked_mul(args.dim)
        .is_none_or(|v| v > MAX_VECTOR_VALUES)
    {
        bail!(
            "{most} vectors of {} dims exceed {MAX_VECTOR_VALUES} values (4 bytes each): lower --n, --queries or --dim",
            args.dim
        );
    }
    let spec = ClusterSpec {
        dim: args.dim,
        clusters: args.clusters,
        group_size: args.group_size,
        spread: args.spread,
        seed: args.seed,
        ..ClusterSpec::default()
    };
    let base = vectors(&spec, args.n, 0);
    npy::save(&args.out, &base).with_context(|| format!("writing {}", args.out.display()))?;
    crate::output::line(&format!(
        "{}: {} × {} ({} clusters)",
        args.out.display(),
        args.n,
        args.dim,
        args.clusters
    ))?;
    if let Some(q) = &args.queries_out {
        let queries = vectors(&spec, args.queries, 1);
        npy::save(q, &queries).with_context(|| format!("writing {}", q.display()))?;
        crate::output::line(&format!(
            "{}: {} × {} queries from the same clusters",
            q.display(),
            args.queries,
            args.dim
        ))?;
    }
    Ok(())
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
        max_pixels: config.data.max_image_pixels,
    };
    let images: Vec<usize> = (0..ds.images.len())
        .filter(|&i| ds.images[i].present)
        .collect();
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
    for batch in loader.by_ref() {
        n += batch.n;
        failed += batch.failed.len();
    }
    loader.finish()?;
    let secs = start.elapsed().as_secs_f64();
    let per_s = n as f64 / secs.max(1e-9);
    if args.json {
        crate::output::line(&format!(
            "{}",
            serde_json::json!({"images_per_s": per_s, "images": n, "failed": failed, "image_size": cfg.size, "seconds": secs})
        ))?;
    } else {
        crate::output::line(&format!(
            "loader: {n} images at {} px in {secs:.2} s = {per_s:.0} images/s ({failed} unreadable)",
            cfg.size
        ))?;
    }
    Ok(())
}

fn model_for(
    config: &Config,
    args: &BenchModelArgs,
) -> anyhow::Result<(Embedder, candle_nn::VarMap, candle_core::Device)> {
    let choice = parse_device(args.device.as_deref().unwrap_or(&config.train.device))
        .map_err(|e| anyhow::anyhow!(e))?;
    let device = device::select(choice)?;
    let mut cfg = config.model.embedder();
    cfg.backbone = args.backbone;
    if let Some(s) = args.train_from_stage {
        cfg.train_from_stage = s;
    }
    let (model, varmap) = Embedder::seeded(cfg, &device, 0)?;
    Ok((model, varmap, device))
}

fn random_batch(n: usize, size: u32, device: &candle_core::Device) -> anyhow::Result<Tensor> {
    let s = size as usize;
    Ok(Tensor::randn(0f32, 1.0, (n, 3, s, s), device)?.to_dtype(DType::F32)?)
}

/// One JSON line or a sentence, with the figure under `key` and, for training, the
/// images per second (3 per triplet: the unit the trainer and `embed` report) and the
/// mean seconds per step of each phase; and the conv precision (`model.precision`),
/// with where bf16 ran.
fn report(
    args: &BenchModelArgs,
    what: &str,
    (key, value): (&str, f64),
    phases: Option<&Phases>,
    (device, precision): (&candle_core::Device, Precision),
) -> anyhow::Result<()> {
    let images_per_s = (key == "triplets_per_s").then_some(3.0 * value);
    let info = device::info(device);
    let bf16_on = (precision == Precision::Bf16).then(|| {
        if vitrine_kernels::conv::amx_available() {
            "amx"
        } else {
            "emulated"
        }
    });
    if args.json {
        let mut obj = serde_json::json!({
            "backbone": args.backbone.to_string(),
            "image_size": args.image_size,
            "batch": args.batch,
            "steps": args.steps,
            "device": device::describe(device),
            "device_name": info.name,
            "device_memory_bytes": info.memory_bytes,
            "precision": if bf16_on.is_some() { "bf16" } else { "fp32" },
        });
        if let Some(on) = bf16_on {
            obj["bf16_on"] = serde_json::json!(on);
        }
        obj[key] = serde_json::json!(value);
        if let Some(images) = images_per_s {
            obj["images_per_s"] = serde_json::json!(images);
        }
        if let Some(p) = phases {
            obj["seconds_per_step"] = phases_json(p, args.steps);
        }
        crate::output::line(&obj.to_string())?;
    } else {
        let bf16 = match bf16_on {
            Some("amx") => ", bf16 on AMX tiles",
            Some(_) => ", bf16 emulated (no AMX)",
            None => "",
        };
        crate::output::line(&format!(
            "{what}: {} at {} px, batch {}, {} on {} ({}{bf16}): {value:.2} {}{}",
            args.backbone,
            args.image_size,
            args.batch,
            args.steps,
            device::describe(device),
            info.name,
            key.replace("_per_s", "/s"),
            images_per_s.map_or_else(String::new, |i| format!(" ({i:.1} images/s)"))
        ))?;
        if let Some(p) = phases {
            let m = phases_json(p, args.steps);
            crate::output::line(&format!(
                "  per step: forward + loss {:.3} s, backward {:.3} s, optimizer {:.3} s",
                m["forward"].as_f64().unwrap_or(f64::NAN),
                m["backward"].as_f64().unwrap_or(f64::NAN),
                m["optimizer"].as_f64().unwrap_or(f64::NAN)
            ))?;
        }
    }
    Ok(())
}

/// Mean seconds per step of each phase, as JSON.
fn phases_json(p: &Phases, steps: usize) -> serde_json::Value {
    let n = steps.max(1) as f64;
    serde_json::json!({
        "forward": p.forward / n,
        "backward": p.backward / n,
        "optimizer": p.optimizer / n,
    })
}

/// One warm-up step, then `args.steps` timed ones: `batch` items per step, per second.
fn timed_rate(
    args: &BenchModelArgs,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    step()?;
    let start = Instant::now();
    for _ in 0..args.steps {
        step()?;
    }
    Ok((args.steps * args.batch) as f64 / start.elapsed().as_secs_f64())
}

fn train(config: &Config, args: &BenchModelArgs) -> anyhow::Result<()> {
    if args.batch < 2 || args.steps == 0 {
        bail!("--batch must be at least 2 and --steps at least 1");
    }
    let (model, varmap, device) = model_for(config, args)?;
    // The original recipe's loss (offline triplets), through the trainer's own step.
    let loss = LossConfig {
        kind: LossKind::Triplet,
        mining: Mining::Offline,
        soft_margin: false,
        ..config.loss
    };
    let criterion = Criterion::new(loss, 0, config.model.embedding_dim, &device, 0)?;
    let mut optimisers = Optimisers::new(&model, &varmap, &criterion, config.train.weight_decay)?;
    let settings = StepSettings {
        lr: 1e-4,
        proxy_lr_scale: config.loss.proxy_lr_scale,
        grad_clip: config.train.grad_clip,
    };
    let x = random_batch(3 * args.batch, args.image_size, &device)?;
    let labels: Vec<u64> = (0..3 * args.batch as u64).collect();
    let mut phases = Phases::default();
    let mut warm = true;
    let step = || -> anyhow::Result<()> {
        let report = train_step(
            &model,
            &criterion,
            &mut optimisers,
            &x,
            &labels,
            &[],
            settings,
            Some(&device),
        )?;
        if !std::mem::take(&mut warm) {
            phases.forward += report.phases.forward;
            phases.backward += report.phases.backward;
            phases.optimizer += report.phases.optimizer;
        }
        Ok(())
    };
    let per_s = timed_rate(args, step)?;
    let per_s = ("triplets_per_s", per_s);
    let how = (&device, config.model.precision);
    report(args, "bench train", per_s, Some(&phases), how)?;
    Ok(())
}

fn embed(config: &Config, args: &BenchModelArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let (model, _varmap, device) = model_for(config, args)?;
    let x = random_batch(args.batch, args.image_size, &device)?;
    let step = || -> anyhow::Result<()> {
        let e = model.embed(&x)?;
        device.synchronize()?;
        drop(e);
        Ok(())
    };
    let per_s = timed_rate(args, step)?;
    let how = (&device, config.model.precision);
    report(args, "bench embed", ("images_per_s", per_s), None, how)?;
    Ok(())
}
