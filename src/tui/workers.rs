//! Background work for the dashboard, one file per worker, each on its own thread(s)
//! and reporting typed [`WorkerEvent`]s: following the run's `metrics.jsonl` and lock
//! ([`follow`]), reading the dataset ([`dataset`]), scoring triplets under the newest
//! checkpoint ([`scoring`]), building the index and searching it ([`index`]), ranking
//! every test query for the failures view ([`failures`]), decoding thumbnails
//! ([`thumbs`]), starting the trainer process ([`trainer`]), listing the runs folder
//! ([`runs`]). The workers of the run the dashboard shows start and stop together
//! ([`run`]). The UI thread never waits on any of them.

pub mod dataset;
pub mod failures;
pub mod follow;
pub mod index;
pub mod run;
pub mod runs;
pub mod scoring;
pub mod thumbs;
pub mod trainer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::app::WorkerEvent;

// The entry points the runtime and the commands start workers with.
pub use dataset::spawn_dataset;
pub use follow::spawn_follower;
pub use index::{IndexWorker, index_status};
pub use run::{RunWorkers, Shown};
pub use runs::RunsWorker;
pub use scoring::spawn_scorer;
pub use thumbs::ThumbWorker;
pub use trainer::spawn_trainer;

/// Sends to the UI's event loop; a closed UI ends the worker quietly. Sending never
/// blocks (the channel is unbounded: the UI drains it every turn of its loop), so
/// workers on plain threads need no runtime.
///
/// An outbox made by [`Outbox::for_run`] belongs to one opened run: its events reach
/// the UI as [`WorkerEvent::OfRun`] with that run's generation (the app drops them
/// once another run is open), and sending fails as soon as another run was opened, so
/// its workers stop at their next send.
#[derive(Clone)]
pub struct Outbox {
    tx: UnboundedSender<WorkerEvent>,
    /// The generation of the run shown now, shared by every clone.
    shown: Arc<AtomicU64>,
    /// This outbox's run, `None` for workers not tied to one (runs, thumbnails).
    run: Option<u64>,
}

impl Outbox {
    /// An outbox and the end the UI reads.
    pub fn channel() -> (Self, UnboundedReceiver<WorkerEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let out = Self {
            tx,
            shown: Arc::new(AtomicU64::new(0)),
            run: None,
        };
        (out, rx)
    }

    /// The outbox of the run opened as `generation`, which from now on is the one
    /// shown: the outboxes of earlier runs stop sending.
    #[must_use]
    pub fn for_run(&self, generation: u64) -> Self {
        self.shown.store(generation, Ordering::SeqCst);
        Self {
            run: Some(generation),
            ..self.clone()
        }
    }

    /// False when the UI is gone or this outbox's run is no longer shown.
    pub fn send(&self, e: WorkerEvent) -> bool {
        match self.run {
            None => self.tx.send(e).is_ok(),
            Some(g) if g == self.shown.load(Ordering::SeqCst) => self
                .tx
                .send(WorkerEvent::OfRun {
                    generation: g,
                    event: Box::new(e),
                })
                .is_ok(),
            Some(_) => false,
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn an_outbox_of_a_run_no_longer_shown_stops_sending() {
        let (out, mut rx) = Outbox::channel();
        let first = out.for_run(0);
        assert!(first.send(WorkerEvent::Status("a".into())));
        assert!(out.send(WorkerEvent::Status("untagged".into())));
        let second = out.for_run(1);
        assert!(!first.send(WorkerEvent::Status("late".into())), "stale");
        assert!(second.send(WorkerEvent::Status("b".into())));
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| match e {
                WorkerEvent::OfRun { generation, event } => match *event {
                    WorkerEvent::Status(m) => format!("{generation}:{m}"),
                    other => panic!("unexpected {other:?}"),
                },
                WorkerEvent::Status(m) => m,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(got, ["0:a", "untagged", "1:b"]);
    }

    #[test]
    fn a_worker_that_panics_reports_instead_of_leaving_the_ui_waiting() {
        let (out, mut rx) = Outbox::channel();
        spawn("test", &out, WorkerEvent::ScoresFailed, || panic!("boom"));
        let end = Instant::now() + Duration::from_secs(30);
        let msg = loop {
            if let Ok(msg) = rx.try_recv() {
                break msg;
            }
            assert!(Instant::now() < end, "no report from the dead worker");
            std::thread::sleep(Duration::from_millis(10));
        };
        match msg {
            WorkerEvent::ScoresFailed(m) => {
                assert!(
                    m.contains("test worker stopped") && m.contains("boom"),
                    "{m}"
                );
            }
            _ => panic!("unexpected message"),
        }
    }
}
