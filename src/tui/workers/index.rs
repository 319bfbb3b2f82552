//! The search index: its state on disk, building it, and searching it; the failures
//! view's computation starts here too, with the model and index already in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::failures::{FailuresJob, spawn_failures};
use super::{Outbox, spawn};
use crate::config::Config;
use crate::index::{CheckpointChoice, Searcher};
use crate::run::folder::CheckpointKind;
use crate::run::folder::RunDir;
use crate::tui::app::WorkerEvent;
use crate::tui::tabs::dataset::ImageInfo;
use crate::tui::tabs::failures::FailuresUpdate;
use crate::tui::tabs::search::{HitInfo, IndexStatus, ModelLoad, SearchResults, TOP_K};

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
    match crate::index::backend::read(&dir) {
        Ok(r) => IndexStatus::Ready { count: r.count() },
        Err(_) if !dir.exists() => IndexStatus::Missing,
        Err(e) => IndexStatus::Failed(format!("{e} (press i to rebuild)")),
    }
}

/// What the search thread is asked.
enum Request {
    /// Open the model and index now (they take about a second), so the first search
    /// does not wait for them.
    Warm,
    Search(PathBuf, Option<String>),
    /// Rank every test query for the failures view.
    Failures(FailuresJob),
}

/// Searches and index builds, one thread each; a build makes the searcher reopen.
/// Whenever an index is ready (found at start, or just built) the searcher is opened
/// in the background, saying so ([`WorkerEvent::Model`]); requests that arrive
/// meanwhile wait for it. The failures view's computation gets a thread of its own
/// with the same searcher.
pub struct IndexWorker {
    searches: Sender<Request>,
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
        let warm = worker.searches.clone();
        let failed = |m| WorkerEvent::Index(IndexStatus::Failed(m));
        spawn("index-status", &out.clone(), failed, move || {
            let status = index_status(&run);
            let ready = matches!(status, IndexStatus::Ready { .. });
            out.send(WorkerEvent::Index(status));
            if ready {
                let _ = warm.send(Request::Warm);
            }
        });
        worker
    }

    pub fn search(&self, path: PathBuf, item: Option<String>) {
        if self.searches.send(Request::Search(path, item)).is_err() {
            tracing::error!("the search thread is gone");
            self.out.send(WorkerEvent::Search(Err(
                "the search worker has stopped (see the log); restart the dashboard".into(),
            )));
        }
    }

    /// Ranks `queries` for the failures view (request `token`) once the model and
    /// index are in memory; a newer request cancels an older one.
    pub fn failures(&self, token: u64, queries: Vec<ImageInfo>) {
        let job = FailuresJob {
            token,
            queries,
            data: self.config.data.clone(),
            batch: self.config.index.batch,
        };
        if self.searches.send(Request::Failures(job)).is_err() {
            tracing::error!("the search thread is gone");
            self.out.send(WorkerEvent::Failures {
                token,
                update: FailuresUpdate::Done(Err(
                    "the search worker has stopped (see the log); restart the dashboard".into(),
                )),
            });
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
        let warm = self.searches.clone();
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
            // Into the backend the settings name (`index.backend`).
            match crate::index::backend::build_configured(&job, &mut progress) {
                Ok(count) => {
                    tracing::info!(
                        "index of {} built: {count} images in {:.1} s",
                        run.display(),
                        started.elapsed().as_secs_f64()
                    );
                    generation.fetch_add(1, Ordering::SeqCst);
                    out.send(WorkerEvent::Index(IndexStatus::Ready { count }));
                    let _ = warm.send(Request::Warm);
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
    let recorded = crate::index::backend::read(&dir)
        .map_err(|e| format!("{e} (press i to build the index)"))?;
    let choice = if recorded.checkpoint().is_empty() {
        index_checkpoint(run).unwrap_or_default()
    } else {
        CheckpointChoice::Path(PathBuf::from(recorded.checkpoint()))
    };
    Searcher::open(run, &choice).map_err(|e| e.to_string())
}

fn search_loop(run: &Path, rx: &Receiver<Request>, generation: &AtomicU64, out: &Outbox) {
    let mut searcher: Option<(u64, Arc<Searcher>)> = None;
    let mut running_failures: Option<Arc<AtomicBool>> = None;
    while let Ok(first) = rx.recv() {
        // Everything already asked: only the newest search and the newest failures
        // request matter (a warm-up never hides one).
        let (mut search, mut failures) = (None, None);
        for request in std::iter::once(first).chain(rx.try_iter()) {
            match request {
                Request::Warm => {}
                Request::Search(path, item) => search = Some((path, item)),
                Request::Failures(job) => failures = Some(job),
            }
        }
        let started = Instant::now();
        let gen_now = generation.load(Ordering::SeqCst);
        if searcher.as_ref().is_none_or(|(g, _)| *g != gen_now) {
            searcher = None;
            if !out.send(WorkerEvent::Model(ModelLoad::Loading)) {
                return;
            }
            match open_searcher(run) {
                Ok(s) => {
                    let seconds = started.elapsed().as_secs_f64();
                    tracing::info!("search model and index loaded in {seconds:.2} s");
                    let beam = s.beam_label(TOP_K);
                    out.send(WorkerEvent::Model(ModelLoad::Ready { seconds, beam }));
                    searcher = Some((gen_now, Arc::new(s)));
                }
                Err(e) => {
                    tracing::warn!("cannot load the search model and index: {e}");
                    out.send(WorkerEvent::Model(ModelLoad::Failed(e.clone())));
                    if let Some(job) = failures {
                        out.send(WorkerEvent::Failures {
                            token: job.token,
                            update: FailuresUpdate::Done(Err(e.clone())),
                        });
                    }
                    if search.is_some() && !out.send(WorkerEvent::Search(Err(e))) {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some((_, s)) = &searcher else { continue };
        if let Some(job) = failures {
            if let Some(older) = running_failures.take() {
                older.store(true, Ordering::Relaxed);
            }
            let cancel = Arc::new(AtomicBool::new(false));
            running_failures = Some(Arc::clone(&cancel));
            spawn_failures(Arc::clone(s), job, cancel, out.clone());
        }
        let Some((path, item)) = search else {
            continue;
        };
        let result = s
            .search_image(&path, TOP_K)
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
