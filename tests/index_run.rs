//! Index, search and evaluation on a small trained run (150 synthetic items, 32 px,
//! a few epochs, trained once per test binary).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use vitrine::config::Config;
use vitrine::data::deepfashion::{Dataset, GalleryProtocol, LoadOptions, Split};
use vitrine::index::build::{self, Gallery, IndexJob};
use vitrine::index::evaluate::{EvalJob, evaluate};
use vitrine::index::rerank::{VectorIndex, recall_at_k};
use vitrine::index::store::{self, IndexError};
use vitrine::index::tune;
use vitrine::index::{CheckpointChoice, SearchError, Searcher};
use vitrine::model::{Embedder, checkpoint};
use vitrine::train::job::{Control, TrainJob};
use vitrine::train::trainer::train;

struct Trained {
    data: PathBuf,
    run: PathBuf,
    config: Config,
    _tmp: tempfile::TempDir,
}

fn trained() -> &'static Trained {
    static RUN: OnceLock<Trained> = OnceLock::new();
    RUN.get_or_init(|| {
        let data = common::synth_dataset(150, 64);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = common::tiny_train_config();
        config.train.epochs = 8;
        config.data.workers = 2;
        // About 90 steps at 32 px: too short for the default rotation, shrink and
        // inversion to pay off on garments (README: "Across artists"); this test is
        // about evaluating a checkpoint, so it trains without them.
        config.augment.rotate = 0.0;
        config.augment.shrink = 0.0;
        config.augment.invert = 0.0;
        let job = TrainJob {
            config: config.clone(),
            data: data.clone(),
            run: tmp.path().join("run"),
            resume: false,
        };
        train(&job, &Control::new(), &mut |_| {}).expect("train");
        Trained {
            data,
            run: job.run,
            config,
            _tmp: tmp,
        }
    })
}

fn eval_job(t: &Trained, checkpoint: Option<CheckpointChoice>) -> EvalJob {
    EvalJob {
        run: t.run.clone(),
        data: t.data.clone(),
        protocol: GalleryProtocol::Test,
        checkpoint,
        raw_pixels: None,
        settings: t.config.index.clone(),
        loader: t.config.data.clone(),
        by_category: false,
        failures: 0,
    }
}

/// A copy of the run's settings and checkpoints (so tests can index it separately).
fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("checkpoints")).expect("mkdir");
    std::fs::copy(from.join("config.toml"), to.join("config.toml")).expect("config");
    for e in std::fs::read_dir(from.join("checkpoints")).expect("ls") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join("checkpoints").join(e.file_name())).expect("copy");
    }
}

fn dataset(t: &Trained) -> Dataset {
    Dataset::open(&t.data, LoadOptions::default()).expect("dataset")
}

#[test]
fn eval_of_the_trained_checkpoint_beats_the_untrained_network() {
    let t = trained();
    // The last checkpoint: on this tiny validation set (val top-20 flat at ~0.8 from
    // the second epoch on) `best` can be an epoch-2 one that has hardly trained.
    let trained = evaluate(
        &eval_job(t, Some(CheckpointChoice::Last)),
        &mut |_, _, _| {},
    )
    .expect("eval trained");
    let untrained = evaluate(&eval_job(t, None), &mut |_, _, _| {}).expect("eval untrained");
    // The test gallery holds ~56 images, so top-20 is near saturation; MAP@R, top-5 and
    // the sum over every reported k are what training must improve.
    let sum = |r: &vitrine::index::evaluate::EvalReport| r.top_k.values().sum::<f64>();
    assert!(
        trained.map_at_r > untrained.map_at_r
            && trained.top_k["5"] > untrained.top_k["5"]
            && sum(&trained) > sum(&untrained),
        "the trained checkpoint must beat the untrained network:\n{trained:?}\n{untrained:?}"
    );
    assert!(
        trained.index_recall_at_k.is_some_and(|r| r >= 0.99),
        "{:?}",
        trained.index_recall_at_k
    );
    // The untrained baseline is reproducible (seeded).
    let again = evaluate(&eval_job(t, None), &mut |_, _, _| {}).expect("eval again");
    assert_eq!(again.top_k, untrained.top_k);
}

#[test]
fn index_then_search_and_the_errors_users_meet() {
    let t = trained();
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    copy_run(&t.run, &run);
    // No index yet.
    let err = Searcher::open(&run, &CheckpointChoice::Best).expect_err("no index");
    assert!(
        matches!(err, SearchError::Index(IndexError::Missing { .. })),
        "{err}"
    );
    let job = IndexJob {
        run: run.clone(),
        checkpoint: CheckpointChoice::Best,
        gallery: Gallery::Dataset {
            root: t.data.clone(),
            protocol: GalleryProtocol::Test,
        },
        settings: t.config.index.clone(),
        data: t.config.data.clone(),
    };
    let report = build::build(&job, &mut |_, _| {}).expect("index");
    let ds = dataset(t);
    assert_eq!(report.count, ds.gallery(GalleryProtocol::Test).len());
    assert!(report.self_recall >= 0.99);
    // The beam `index` measured: stored, reaching the target, and what searches use.
    let choice = report.search_ef.expect("measured beam");
    let target = t.config.index.target_recall;
    assert!(choice.reached && choice.recall >= target, "{choice:?}");
    assert_eq!((choice.k, choice.target), (tune::RECALL_K, target));
    let stored = store::load(&run.join("index")).expect("load");
    assert_eq!(stored.header.graph.search_ef, Some(choice));
    assert!(
        held_out_recall(&stored.vectors, choice.ef) >= target,
        "{choice:?}"
    );
    let searcher = Searcher::open(&run, &CheckpointChoice::Best).expect("open");
    assert_eq!(searcher.len(), report.count);
    assert_eq!(searcher.tuned_ef(), Some(choice));
    assert_eq!(searcher.params().resolve(20), (choice.ef, choice.ef));
    assert!(
        searcher
            .beam_label(20)
            .starts_with(&format!("ef {} measured for recall@20 0.99 (", choice.ef)),
        "{}",
        searcher.beam_label(20)
    );
    // index.ef_search set: it wins over the measured beam.
    let mut fixed = t.config.index.clone();
    fixed.ef_search = 37;
    let overridden = Searcher::open(&run, &CheckpointChoice::Best)
        .expect("open")
        .with_settings(&fixed);
    assert_eq!(overridden.tuned_ef(), None);
    assert_eq!(overridden.params().resolve(20), (100, 100));
    assert_eq!(overridden.beam_label(20), "ef 100 (index.ef_search)");
    fixed.shortlist = 30;
    let overridden = overridden.with_settings(&fixed);
    assert_eq!(overridden.params().resolve(20), (30, 37));
    let query = ds.image_path(ds.queries(Split::Test)[0]);
    let hits = searcher.search_image(&query, 20).expect("search");
    assert_eq!(hits.len(), 20);
    assert_eq!(hits[0].rank, 1);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(
        hits.iter()
            .all(|h| h.category.contains('/') && h.item_id.starts_with("id_"))
    );
    let v = searcher.embed_image(&query).expect("embed");
    assert_eq!(searcher.search_exact(&v, 20).expect("exact"), hits);
    // A checkpoint with other weights: a clear error asking to re-index.
    let other = tmp.path().join("other.safetensors");
    let (_, varmap) =
        Embedder::seeded(t.config.model.embedder(), &candle_core::Device::Cpu, 999).expect("m");
    checkpoint::save(&varmap, &other).expect("save");
    let err = Searcher::open(&run, &CheckpointChoice::Path(other)).expect_err("stale");
    assert!(matches!(err, SearchError::Stale(_)), "{err}");
    assert!(err.to_string().contains("re-index"), "{err}");
    // The same weights embedding differently (a test-time view switched on in the
    // run's settings after indexing): also stale, not silently mixed.
    let settings = run.join("config.toml");
    let text = std::fs::read_to_string(&settings).expect("settings");
    assert!(text.contains("invert_average = false"), "{text}");
    let views = text.replace("invert_average = false", "invert_average = true");
    std::fs::write(&settings, views).expect("write");
    let err = Searcher::open(&run, &CheckpointChoice::Best).expect_err("other views");
    assert!(matches!(err, SearchError::Stale(_)), "{err}");
    assert!(err.to_string().contains("+negative"), "{err}");
    assert!(text.contains("precision = \"fp32\""), "{text}");
    let bf16 = text.replace("precision = \"fp32\"", "precision = \"bf16\"");
    std::fs::write(&settings, bf16).expect("write");
    let err = Searcher::open(&run, &CheckpointChoice::Best).expect_err("bf16");
    assert!(err.to_string().contains("+bf16"), "{err}");
    std::fs::write(&settings, text).expect("restore");
    Searcher::open(&run, &CheckpointChoice::Best).expect("the index's own settings again");
    // Unreadable query, wrong vector width, missing checkpoint.
    let text = tmp.path().join("not-an-image.jpg");
    std::fs::write(&text, "hello").expect("write");
    let err = searcher.search_image(&text, 5).expect_err("unreadable");
    assert!(err.to_string().contains("not-an-image.jpg"), "{err}");
    assert!(matches!(
        searcher.search_vector(&[0.5; 3], 5),
        Err(SearchError::QueryDim { got: 3, .. })
    ));
    let err = Searcher::open(
        &run,
        &CheckpointChoice::Path(tmp.path().join("nope.safetensors")),
    )
    .expect_err("no checkpoint");
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
    // NaN queries are refused rather than ranked.
    let mut nan = v.clone();
    nan[0] = f32::NAN;
    assert!(matches!(
        searcher.search_vector(&nan, 5),
        Err(SearchError::NotFinite)
    ));
    // A damaged checkpoint that embeds NaN: indexing refuses, naming an image, and the
    // index already there stays as it was.
    let (_, varmap) =
        Embedder::seeded(t.config.model.embedder(), &candle_core::Device::Cpu, 0).expect("m");
    checkpoint::load_full(&varmap, &run.join("checkpoints/best.safetensors")).expect("load");
    let head = varmap.data().lock().expect("lock")["head.weight"].clone();
    head.set(&(head.as_tensor() * f64::NAN).expect("nan"))
        .expect("set");
    let damaged = tmp.path().join("damaged.safetensors");
    checkpoint::save(&varmap, &damaged).expect("save");
    let before = std::fs::read(run.join("index/header.json")).expect("header");
    let err = build::build(
        &IndexJob {
            checkpoint: CheckpointChoice::Path(damaged),
            ..job.clone()
        },
        &mut |_, _| {},
    )
    .expect_err("NaN embeddings");
    assert!(err.to_string().contains("not finite"), "{err}");
    assert!(err.to_string().contains(".jpg"), "{err}");
    assert_eq!(
        std::fs::read(run.join("index/header.json")).expect("header"),
        before
    );
}

/// Copies the shop images of the test gallery into `dir/<item>/<name>.jpg`.
fn export_gallery(ds: &Dataset, images: &[usize], dir: &Path) {
    for &i in images {
        let item = &ds.items[ds.images[i].item].id;
        let src = ds.image_path(i);
        let name = src.file_name().expect("name");
        let dest = dir.join(item).join(name);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&src, &dest).expect("copy");
    }
}

#[test]
fn add_matches_a_full_rebuild() {
    let t = trained();
    let ds = dataset(t);
    let gallery = ds.gallery(GalleryProtocol::Test);
    let tmp = tempfile::tempdir().expect("tmp");
    let images = tmp.path().join("images");
    let (first, second) = gallery.split_at(gallery.len() / 2);
    export_gallery(&ds, first, &images.join("a"));
    export_gallery(&ds, second, &images.join("b"));
    let settings = t.config.index.clone();
    let folder_job = |run: &Path, dir: &Path| IndexJob {
        run: run.to_path_buf(),
        checkpoint: CheckpointChoice::Last,
        gallery: Gallery::Folder(dir.to_path_buf()),
        settings: settings.clone(),
        data: t.config.data.clone(),
    };
    // Incremental: a, then --add b (and b again: nothing new).
    let inc = tmp.path().join("inc");
    copy_run(&t.run, &inc);
    build::build(&folder_job(&inc, &images.join("a")), &mut |_, _| {}).expect("index a");
    let added = build::add(
        &inc,
        &CheckpointChoice::Last,
        &images.join("b"),
        &settings,
        &t.config.data,
        &mut |_, _| {},
    )
    .expect("add b");
    assert_eq!(added.added, second.len());
    assert_eq!(added.count, gallery.len());
    let again = build::add(
        &inc,
        &CheckpointChoice::Last,
        &images.join("b"),
        &settings,
        &t.config.data,
        &mut |_, _| {},
    )
    .expect("add b again");
    assert_eq!((again.added, again.already_indexed), (0, second.len()));
    // Full rebuild over both folders.
    let full = tmp.path().join("full");
    copy_run(&t.run, &full);
    build::build(&folder_job(&full, &images), &mut |_, _| {}).expect("index all");
    let a = Searcher::open(&inc, &CheckpointChoice::Last).expect("open inc");
    let b = Searcher::open(&full, &CheckpointChoice::Last).expect("open full");
    let (ra, rb) = (a.rows().expect("rows"), b.rows().expect("rows"));
    let mut pa: Vec<&str> = ra.entries().iter().map(|e| e.path.as_str()).collect();
    let mut pb: Vec<&str> = rb.entries().iter().map(|e| e.path.as_str()).collect();
    pa.sort_unstable();
    pb.sort_unstable();
    assert_eq!(pa, pb);
    // Another checkpoint cannot --add to this index.
    let other = tmp.path().join("other.safetensors");
    let (_, varmap) =
        Embedder::seeded(t.config.model.embedder(), &candle_core::Device::Cpu, 5).expect("m");
    checkpoint::save(&varmap, &other).expect("save");
    let err = build::add(
        &inc,
        &CheckpointChoice::Path(other),
        &images.join("b"),
        &settings,
        &t.config.data,
        &mut |_, _| {},
    )
    .expect_err("stale add");
    assert!(err.to_string().contains("rebuild"), "{err}");
    // Same results: exact re-ranked lists agree (paths and scores), HNSW top-k sets too.
    let mut overlap = 0usize;
    let mut total = 0usize;
    for &q in ds.queries(Split::Test).iter().take(40) {
        let v = a.embed_image(&ds.image_path(q)).expect("embed");
        let ea = a.search_exact(&v, 10).expect("exact a");
        let eb = b.search_exact(&v, 10).expect("exact b");
        for (x, y) in ea.iter().zip(&eb) {
            assert!(
                (x.score - y.score).abs() < 1e-4,
                "{} vs {}",
                x.score,
                y.score
            );
            if x.path != y.path {
                // Only a float tie may swap two results.
                let other = eb.iter().find(|h| h.path == x.path).expect("same set");
                assert!((other.score - x.score).abs() < 1e-4);
            }
        }
        let ha = a.search_vector(&v, 10).expect("hnsw a");
        let hb = b.search_vector(&v, 10).expect("hnsw b");
        overlap += ha
            .iter()
            .filter(|h| hb.iter().any(|g| g.path == h.path))
            .count();
        total += ha.len();
    }
    assert!(overlap as f64 >= 0.98 * total as f64, "{overlap}/{total}");
}

/// Recall@20 of `index` searched as [`tune`] measures it (beam `ef`, the whole beam
/// re-ranked, every row a query held out of the walk and of its own results)
/// against the exact scan: an independent check of the measured figure.
fn held_out_recall(index: &VectorIndex, ef: usize) -> f64 {
    let k = tune::RECALL_K;
    let ids = |hits: Vec<vitrine::eval::Hit>| -> Vec<usize> {
        hits.into_iter().map(|h| h.index).collect()
    };
    let found: Vec<Vec<usize>> = (0..index.len())
        .map(|id| ids(index.search_row_held_out(id, k, tune::params_at(ef))))
        .collect();
    let exact: Vec<Vec<usize>> = (0..index.len())
        .map(|id| {
            let mut hits = ids(index.exact(index.vectors().row(id), k + 1));
            hits.retain(|&j| j != id);
            hits.truncate(k);
            hits
        })
        .collect();
    recall_at_k(&found, &exact, k)
}

fn vitrine(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .output()
        .expect("run vitrine")
}

#[test]
fn cli_index_search_and_eval_print_json_and_fail_cleanly() {
    let t = trained();
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    copy_run(&t.run, &run);
    let (runs, data) = (run.to_str().expect("utf8"), t.data.to_str().expect("utf8"));
    // Search before indexing: an error that says what to do, no panic.
    let ds = dataset(t);
    let query = ds.image_path(ds.queries(Split::Test)[1]);
    let q = query.to_str().expect("utf8");
    let out = vitrine(&["search", "--run", runs, q]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vitrine index --run"), "{err}");
    let out = vitrine(&["index", "--run", runs, "--data", data, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["count"], ds.gallery(GalleryProtocol::Test).len());
    let ef = &report["search_ef"];
    assert!(ef["ef"].as_u64() > Some(0), "{report}");
    assert!(ef["recall"].as_f64() >= Some(0.99), "{report}");
    assert_eq!(ef["reached"], true);
    let out = vitrine(&["search", "--run", runs, q, "--k", "5", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["query"], q);
    assert_eq!(v["k"], 5);
    assert!(v["ms"].as_f64().is_some());
    let hits = v["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 5);
    for (i, h) in hits.iter().enumerate() {
        assert_eq!(h["rank"], i + 1);
        for key in ["path", "item_id", "category"] {
            assert!(h[key].is_string(), "{key}");
        }
        assert!(h["score"].is_f64());
    }
    let out = vitrine(&["search", "--run", runs, "/no/such/image.jpg"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/image.jpg"));
    let out = vitrine(&[
        "eval",
        "--run",
        runs,
        "--data",
        data,
        "--untrained",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["protocol"], "test");
    for k in ["1", "5", "10", "20", "50"] {
        assert!(v["top_k"][k].is_f64(), "top_k {k}");
    }
    assert!(v["map_at_r"].is_f64() && v["index_recall_at_k"].is_f64());
    assert!(v["index_ef"].as_u64() > Some(0), "{v}");
    assert!(v["queries"].as_u64() > Some(0) && v["gallery"].as_u64() > Some(0));
    let out = vitrine(&["eval", "--run", runs, "--data", data]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("protocol test"));
    // The HNSW figure says where its graph comes from (not RUN/index).
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(
            "search check: in-process HNSW, on a graph built for this evaluation (not RUN/index), beam ef "
        ),
        "{report}"
    );
    // The summary names the measured beam.
    let out = vitrine(&["index", "--run", runs, "--data", data]);
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("search beam: ef ") && summary.contains("(target 0.99"),
        "{summary}"
    );
}

#[test]
fn per_category_scores_and_failures_agree_with_the_totals() {
    let t = trained();
    let mut job = eval_job(t, Some(CheckpointChoice::Best));
    job.by_category = true;
    job.failures = 7;
    let r = evaluate(&job, &mut |_, _, _| {}).expect("eval");
    let cats = r.by_category.as_ref().expect("by category");
    assert_eq!(cats.iter().map(|c| c.queries).sum::<usize>(), r.queries);
    for (k, key) in [(1, "1"), (20, "20")] {
        let weighted: f64 = cats
            .iter()
            .map(|c| c.queries as f64 * if k == 1 { c.top1 } else { c.top20 })
            .sum::<f64>()
            / r.queries as f64;
        assert!(
            (weighted - r.top_k[key]).abs() < 1e-9,
            "top-{k}: {weighted} vs {}",
            r.top_k[key]
        );
    }
    assert!(
        cats.windows(2).all(|w| w[0].top20 <= w[1].top20),
        "worst first"
    );
    let failures = r.failures.as_ref().expect("failures");
    assert!(!failures.is_empty() && failures.len() <= 7);
    assert!(
        failures.windows(2).all(|w| w[0].rank >= w[1].rank),
        "worst first"
    );
    for f in failures {
        assert!(f.rank > 1);
        assert_eq!(f.beaten_by.len(), (f.rank - 1).min(5));
        assert!(f.beaten_by.iter().all(|h| h.score >= f.true_image.score));
        assert!(f.beaten_by.iter().all(|h| h.item_id != f.item_id));
    }
    // Plain eval reports neither.
    let plain = evaluate(
        &eval_job(t, Some(CheckpointChoice::Best)),
        &mut |_, _, _| {},
    )
    .expect("eval");
    assert!(plain.by_category.is_none() && plain.failures.is_none());
    assert_eq!(plain.top_k, r.top_k);
}

/// The dashboard's search worker on an indexed run: it loads the model and index once
/// (a search asked during that load waits for it), and its failures computation lists
/// the test queries worst first exactly as `eval --failures` and `--by-category` do.
#[test]
fn the_dashboards_failures_worker_orders_queries_like_eval_failures() {
    use std::time::{Duration, Instant};
    use vitrine::tui::app::WorkerEvent;
    use vitrine::tui::tabs::failures::FailuresUpdate;
    use vitrine::tui::tabs::search::ModelLoad;
    use vitrine::tui::workers::dataset::read_dataset;
    use vitrine::tui::workers::{IndexWorker, Outbox};

    let t = trained();
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    copy_run(&t.run, &run);
    let job = IndexJob {
        run: run.clone(),
        checkpoint: CheckpointChoice::Best,
        gallery: Gallery::Dataset {
            root: t.data.clone(),
            protocol: GalleryProtocol::Test,
        },
        settings: t.config.index.clone(),
        data: t.config.data.clone(),
    };
    build::build(&job, &mut |_, _| {}).expect("index");
    let mut eval = eval_job(t, Some(CheckpointChoice::Best));
    eval.run = run.clone();
    eval.by_category = true;
    eval.failures = 100_000;
    let expected = evaluate(&eval, &mut |_, _, _| {}).expect("eval");
    let queries = read_dataset(&t.data, GalleryProtocol::Test, 0)
        .expect("dataset")
        .queries;

    let (out, mut rx) = Outbox::channel();
    let worker = IndexWorker::spawn(run.clone(), t.data.clone(), t.config.clone(), out);
    worker.search(queries[0].path.clone(), Some(queries[0].item_id.clone()));
    worker.failures(7, queries.clone());
    let (mut loads, mut ready, mut search, mut report) = (0, 0, None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while search.is_none() || report.is_none() {
        assert!(Instant::now() < deadline, "no answer from the worker");
        let Ok(event) = rx.try_recv() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        match event {
            WorkerEvent::Model(ModelLoad::Loading) => loads += 1,
            WorkerEvent::Model(ModelLoad::Ready { .. }) => ready += 1,
            WorkerEvent::Model(ModelLoad::Failed(e)) => panic!("load failed: {e}"),
            WorkerEvent::Search(r) => search = Some(r.expect("search")),
            WorkerEvent::Failures {
                token,
                update: FailuresUpdate::Done(r),
            } => {
                assert_eq!(token, 7);
                report = Some(r.expect("failures"));
            }
            _ => {}
        }
    }
    assert_eq!((loads, ready), (1, 1), "the model and index load once");
    assert_eq!(search.expect("search").hits.len(), 20);
    let report = report.expect("report");
    assert_eq!(report.rows.len(), expected.queries);
    assert_eq!(report.gallery, expected.gallery);
    // Worst first: falling rank (no query here lacks a gallery image).
    assert!(
        report
            .rows
            .windows(2)
            .all(|w| w[0].rank.is_none() || w[0].rank >= w[1].rank),
        "worst first"
    );
    // The rows ranked below 1 are `eval --failures`, in the same order.
    let failing: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.rank.is_some_and(|k| k > 1))
        .collect();
    let listed = expected.failures.as_ref().expect("failures");
    assert!(!listed.is_empty(), "a few steps of training leave failures");
    assert_eq!(failing.len(), listed.len());
    for (row, f) in failing.iter().zip(listed) {
        assert_eq!(row.query.path.display().to_string(), f.query);
        assert_eq!(row.rank, Some(f.rank));
        let true_hit = row.true_hit.as_ref().expect("true image");
        assert_eq!(true_hit.item_id, f.true_image.item_id);
        assert!((true_hit.score - f.true_image.score).abs() < 1e-5);
        let ahead: Vec<&str> = row.ahead.iter().map(|h| h.item_id.as_str()).collect();
        let beaten: Vec<&str> = f.beaten_by.iter().map(|h| h.item_id.as_str()).collect();
        assert_eq!(ahead, beaten);
    }
    assert_eq!(Some(&report.categories), expected.by_category.as_ref());
}
