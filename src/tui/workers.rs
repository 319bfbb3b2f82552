//! Background work for the dashboard, each in its own thread, reporting typed
//! [`WorkerEvent`]s: following the run's `metrics.jsonl` and lock, reading the
//! dataset, scoring triplets under the newest checkpoint, searching, building the
//! index, decoding thumbnails. The UI thread never waits on any of them.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::Device;
use crossbeam_channel::{Receiver, Sender};

use super::app::{
    DatasetInfo, HitInfo, ImageInfo, IndexStatus, SearchResults, Thumb, ThumbKey, TripletRow,
    TripletScore, WorkerEvent,
};
use crate::config::Config;
use crate::data::deepfashion::{Dataset, GalleryProtocol, LoadOptions, Split};
use crate::data::loader::{ImageSpec, LoaderConfig};
use crate::data::triplets::TripletSampler;
use crate::index::{CheckpointChoice, Searcher};
use crate::model::Embedder;
use crate::model::checkpoint;
use crate::train::events::CheckpointKind;
use crate::train::metrics_log::MetricsFollower;
use crate::train::run_dir::RunDir;

/// Triplets the Triplets tab lists (the sampler's first epoch, from the start).
pub const MAX_TRIPLETS: usize = 1024;
/// How often the run folder is polled.
pub const POLL: Duration = Duration::from_millis(200);

/// Sends to the UI; a closed UI ends the worker quietly.
#[derive(Clone)]
pub struct Outbox(pub Sender<super::runtime::Msg>);

impl Outbox {
    pub fn send(&self, e: WorkerEvent) -> bool {
        self.0.send(super::runtime::Msg::Worker(e)).is_ok()
    }
}

/// Follows `RUN/metrics.jsonl` from its first line, and the trainer's lock and
/// control file, until `stop` is set or the UI is gone.
pub fn spawn_follower(run: &Path, out: Outbox, stop: Arc<AtomicBool>) {
    let run = RunDir::new(run);
    std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || {
            let mut follower = MetricsFollower::new(&run.metrics());
            let mut last = None;
            let mut last_error = None;
            while !stop.load(Ordering::Relaxed) {
                match follower.poll() {
                    Ok(events) if !events.is_empty() => {
                        if !out.send(WorkerEvent::Train(events)) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let msg = e.to_string();
                        if last_error.as_ref() != Some(&msg) {
                            tracing::warn!("{msg}");
                            last_error = Some(msg.clone());
                            if !out.send(WorkerEvent::MetricsError(msg)) {
                                return;
                            }
                        }
                    }
                }
                let now = (run.locked_by(), run.read_control());
                if last != Some(now) {
                    last = Some(now);
                    if !out.send(WorkerEvent::Trainer {
                        pid: now.0,
                        control: now.1,
                    }) {
                        return;
                    }
                }
                std::thread::sleep(POLL);
            }
        })
        .map_or_else(
            |e| tracing::error!("cannot start the follower thread: {e}"),
            drop,
        );
}

/// Dataset-side facts the dashboard shows.
pub fn read_dataset(
    root: &Path,
    protocol: GalleryProtocol,
    seed: u64,
) -> Result<DatasetInfo, String> {
    let ds = Dataset::open(
        root,
        LoadOptions {
            strict: false,
            skip_file_check: false,
        },
    )
    .map_err(|e| e.to_string())?;
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    let summary = ds.summary(protocol);
    let info = |img: usize| {
        let item = &ds.items[ds.images[img].item];
        let cat = &ds.categories[item.category];
        ImageInfo {
            path: ds.image_path(img),
            item_id: item.id.clone(),
            category: cat.small.clone(),
            big: cat.big.clone(),
            bbox: ds.images[img].bbox,
        }
    };
    let triplets = match TripletSampler::new(&ds, Split::Train, seed) {
        Ok(sampler) => sampler
            .epoch(0)
            .triplets
            .into_iter()
            .take(MAX_TRIPLETS)
            .map(|t| TripletRow {
                anchor: info(t.anchor),
                positive: info(t.positive),
                negative: info(t.negative),
            })
            .collect(),
        Err(e) => {
            tracing::warn!("no training triplets: {e}");
            Vec::new()
        }
    };
    let queries = ds.queries(Split::Test).into_iter().map(info).collect();
    Ok(DatasetInfo {
        root: root.to_path_buf(),
        summary,
        triplets,
        queries,
    })
}

pub fn spawn_dataset(root: PathBuf, protocol: GalleryProtocol, seed: u64, out: Outbox) {
    let failed = |m| WorkerEvent::Dataset(Box::new(Err(m)));
    spawn("dataset", &out.clone(), failed, move || {
        out.send(WorkerEvent::Dataset(Box::new(read_dataset(
            &root, protocol, seed,
        ))));
    });
}

/// Runs `f` on a named thread. If it panics, the panic is logged and `failed(message)`
/// is sent, so the UI never waits forever on a worker that died (Building, a pending
/// search, scoring Running).
fn spawn(
    name: &str,
    out: &Outbox,
    failed: impl FnOnce(String) -> WorkerEvent + Send + 'static,
    f: impl FnOnce() + Send + 'static,
) {
    let out = out.clone();
    let thread = name.to_string();
    let body = move || {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("the {thread} worker stopped: {message}");
            out.send(failed(format!(
                "the {thread} worker stopped unexpectedly ({message}); see the log"
            )));
        }
    };
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(body) {
        tracing::error!("cannot start the {name} thread: {e}");
    }
}

/// The settings a run was trained with (`RUN/config.toml`), else `fallback`.
pub fn run_config(run: &Path, fallback: &Config) -> Config {
    let path = RunDir::new(run).config();
    if path.is_file() {
        match Config::load_run(&path) {
            Ok(c) => return c,
            Err(e) => tracing::warn!("{e}"),
        }
    }
    fallback.clone()
}

/// Scores triplet rows with the run's newest checkpoint (`last`), or the untrained
/// weights when it has none: unit embeddings, Euclidean d(a,p), d(a,n) and
/// `max(0, d(a,p) − d(a,n) + margin)`. Partial results are sent as they come.
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
    let cfg = run_config(run, fallback);
    let device = Device::Cpu;
    let (model, varmap) = Embedder::seeded(cfg.model.embedder(), &device, cfg.train.seed)
        .map_err(|e| e.to_string())?;
    let last = RunDir::new(run).checkpoint(CheckpointKind::Last);
    let weights = if last.is_file() {
        checkpoint::load_full(&varmap, &last).map_err(|e| e.to_string())?;
        match crate::train::trainer::read_meta(&last) {
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
    let margin = cfg.loss.margin;
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
            let embedded = crate::index::embed::embed_images(
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
                        loss: (d_ap - d_an + margin).max(0.0),
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

/// Which checkpoint an index is built from: `best`, else `last`.
pub fn index_checkpoint(run: &Path) -> Option<CheckpointChoice> {
    let dir = RunDir::new(run);
    if dir.checkpoint(CheckpointKind::Best).is_file() {
        Some(CheckpointChoice::Best)
    } else if dir.checkpoint(CheckpointKind::Last).is_file() {
        Some(CheckpointChoice::Last)
    } else {
        None
    }
}

/// The index's state on disk.
pub fn index_status(run: &Path) -> IndexStatus {
    let dir = crate::index::store::readable_dir(&RunDir::new(run).index_dir());
    match crate::index::store::read_header(&dir) {
        Ok(h) => IndexStatus::Ready { count: h.count },
        Err(_) if !dir.exists() => IndexStatus::Missing,
        Err(e) => IndexStatus::Failed(format!("{e} (press i to rebuild)")),
    }
}

/// Searches and index builds, one thread each; a build makes the searcher reopen.
pub struct IndexWorker {
    searches: Sender<(PathBuf, Option<String>)>,
    generation: Arc<AtomicU64>,
    run: PathBuf,
    data: PathBuf,
    config: Config,
    out: Outbox,
}

impl IndexWorker {
    pub fn spawn(run: PathBuf, data: PathBuf, config: Config, out: Outbox) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let generation = Arc::new(AtomicU64::new(0));
        let worker = Self {
            searches: tx,
            generation: Arc::clone(&generation),
            run: run.clone(),
            data,
            config,
            out: out.clone(),
        };
        spawn(
            "search",
            &out.clone(),
            |m| WorkerEvent::Search(Err(m)),
            move || search_loop(&run, &rx, &generation, &out),
        );
        let (run, out) = (worker.run.clone(), worker.out.clone());
        let failed = |m| WorkerEvent::Index(IndexStatus::Failed(m));
        spawn("index-status", &out.clone(), failed, move || {
            out.send(WorkerEvent::Index(index_status(&run)));
        });
        worker
    }

    pub fn search(&self, path: PathBuf, item: Option<String>) {
        if self.searches.send((path, item)).is_err() {
            tracing::error!("the search thread is gone");
            self.out.send(WorkerEvent::Search(Err(
                "the search worker has stopped (see the log); restart the dashboard".into(),
            )));
        }
    }

    pub fn build(&self) {
        let (run, data, config, out) = (
            self.run.clone(),
            self.data.clone(),
            self.config.clone(),
            self.out.clone(),
        );
        let generation = Arc::clone(&self.generation);
        let failed = |m| WorkerEvent::Index(IndexStatus::Failed(m));
        spawn("index", &out.clone(), failed, move || {
            let Some(checkpoint) = index_checkpoint(&run) else {
                out.send(WorkerEvent::Index(IndexStatus::Failed(
                    "no checkpoint yet: train first (t)".into(),
                )));
                return;
            };
            let job = crate::index::IndexJob {
                run: run.clone(),
                checkpoint,
                gallery: crate::index::Gallery::Dataset {
                    root: data,
                    protocol: config.data.gallery,
                },
                settings: config.index.clone(),
                data: config.data.clone(),
            };
            let mut last_sent = Instant::now();
            let mut progress = |done: usize, total: usize| {
                if last_sent.elapsed() >= Duration::from_millis(100) || done >= total {
                    last_sent = Instant::now();
                    out.send(WorkerEvent::Index(IndexStatus::Building { done, total }));
                }
            };
            let started = Instant::now();
            match crate::index::build::build(&job, &mut progress) {
                Ok(report) => {
                    tracing::info!(
                        "index of {} built: {} images in {:.1} s",
                        run.display(),
                        report.count,
                        started.elapsed().as_secs_f64()
                    );
                    generation.fetch_add(1, Ordering::SeqCst);
                    out.send(WorkerEvent::Index(IndexStatus::Ready {
                        count: report.count,
                    }));
                }
                Err(e) => {
                    tracing::warn!("index build failed: {e}");
                    out.send(WorkerEvent::Index(IndexStatus::Failed(e.to_string())));
                }
            }
        });
    }
}

fn open_searcher(run: &Path) -> Result<Searcher, String> {
    let dir = crate::index::store::readable_dir(&RunDir::new(run).index_dir());
    let header = crate::index::store::read_header(&dir)
        .map_err(|e| format!("{e} (press i to build the index)"))?;
    let choice = if header.checkpoint.is_empty() {
        index_checkpoint(run).unwrap_or_default()
    } else {
        CheckpointChoice::Path(PathBuf::from(&header.checkpoint))
    };
    Searcher::open(run, &choice).map_err(|e| e.to_string())
}

fn search_loop(
    run: &Path,
    rx: &Receiver<(PathBuf, Option<String>)>,
    generation: &AtomicU64,
    out: &Outbox,
) {
    let mut searcher: Option<(u64, Searcher)> = None;
    while let Ok((mut path, mut item)) = rx.recv() {
        // Only the newest request matters.
        while let Ok(newer) = rx.try_recv() {
            (path, item) = newer;
        }
        let started = Instant::now();
        let gen_now = generation.load(Ordering::SeqCst);
        if searcher.as_ref().is_none_or(|(g, _)| *g != gen_now) {
            searcher = match open_searcher(run) {
                Ok(s) => Some((gen_now, s)),
                Err(e) => {
                    if !out.send(WorkerEvent::Search(Err(e))) {
                        return;
                    }
                    continue;
                }
            };
        }
        let Some((_, s)) = &searcher else { continue };
        let result = s
            .search_image(&path, super::app::TOP_K)
            .map(|hits| SearchResults {
                query: path.clone(),
                query_item: item.clone(),
                hits: hits
                    .into_iter()
                    .map(|h| HitInfo {
                        rank: h.rank,
                        score: h.score,
                        is_match: item.as_ref() == Some(&h.item_id),
                        path: PathBuf::from(h.path),
                        item_id: h.item_id,
                        category: h.category,
                    })
                    .collect(),
                millis: started.elapsed().as_secs_f64() * 1e3,
            })
            .map_err(|e| e.to_string());
        if !out.send(WorkerEvent::Search(result)) {
            return;
        }
    }
}

/// Decodes and fits thumbnails on `threads` threads with the picker chosen at start-up.
pub struct ThumbWorker {
    tx: Sender<ThumbKey>,
}

impl ThumbWorker {
    pub fn spawn(picker: ratatui_image::picker::Picker, threads: usize, out: Outbox) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<ThumbKey>();
        for _ in 0..threads.max(1) {
            let (rx, out, picker) = (rx.clone(), out.clone(), picker.clone());
            spawn("thumbs", &out.clone(), WorkerEvent::Status, move || {
                while let Ok(key) = rx.recv() {
                    let result = make_thumb(&picker, &key);
                    if !out.send(WorkerEvent::Thumb(key, result)) {
                        return;
                    }
                }
            });
        }
        Self { tx }
    }

    pub fn request(&self, key: ThumbKey) {
        let _ = self.tx.send(key);
    }
}

/// Decodes `key.path` and fits it into `key.cols × key.rows` cells.
pub fn make_thumb(picker: &ratatui_image::picker::Picker, key: &ThumbKey) -> Result<Thumb, String> {
    let img = crate::data::loader::open_image(&key.path)
        .map_err(|e| format!("{}: {e}", key.path.display()))?
        .decode()
        .map_err(|e| format!("{}: {e}", key.path.display()))?;
    let font = picker.font_size();
    // Fit the picture to the cells' pixels (up or down, keeping its aspect): the
    // protocol itself never enlarges a small image.
    let (w, h) = (
        (u32::from(key.cols) * u32::from(font.width)).max(1),
        (u32::from(key.rows) * u32::from(font.height)).max(1),
    );
    let img = img.resize(w, h, image::imageops::FilterType::Triangle);
    let protocol = picker
        .new_protocol(
            img,
            ratatui::layout::Size::new(key.cols, key.rows),
            ratatui_image::Resize::Fit(None),
        )
        .map_err(|e| e.to_string())?;
    Ok(Thumb(Arc::new(protocol)))
}

/// Starts `vitrine train` for the run as a detached process: its own process group
/// (Ctrl-C in the dashboard's terminal and a dropped SSH link do not reach it), stdin
/// closed, stdout and stderr appended to `RUN/vitrine.log`. The settings go in
/// `RUN/launch.toml`; an existing `last` checkpoint is resumed. `exe` is the vitrine
/// binary (`std::env::current_exe()` in the dashboard).
pub fn spawn_trainer(
    exe: &Path,
    config: &Config,
    data: &Path,
    run: &Path,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let dir = RunDir::new(run);
    dir.create().map_err(std::io::Error::other)?;
    let resume = dir.checkpoint(CheckpointKind::Last).is_file();
    let mut cfg = config.clone();
    cfg.data.root = data.to_path_buf();
    cfg.train.run = run.to_path_buf();
    let launch = run.join("launch.toml");
    let text = toml::to_string(&cfg).map_err(std::io::Error::other)?;
    crate::fsutil::write_bytes_atomic(&launch, text.as_bytes())?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("train")
        .arg("--data")
        .arg(data)
        .arg("--run")
        .arg(run)
        .arg("--config")
        .arg(&launch);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0);
    tracing::info!("starting {cmd:?}");
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::runtime::Msg;

    #[test]
    fn a_worker_that_panics_reports_instead_of_leaving_the_ui_waiting() {
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        spawn("test", &Outbox(tx), WorkerEvent::ScoresFailed, || {
            panic!("boom")
        });
        let msg = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a report from the dead worker");
        match msg {
            Msg::Worker(WorkerEvent::ScoresFailed(m)) => {
                assert!(
                    m.contains("test worker stopped") && m.contains("boom"),
                    "{m}"
                );
            }
            _ => panic!("unexpected message"),
        }
    }
}
