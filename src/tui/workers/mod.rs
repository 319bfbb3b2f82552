//! Background work for the dashboard, one file per worker, each on its own thread(s)
//! and reporting typed [`WorkerEvent`]s: following the run's `metrics.jsonl` and lock
//! ([`follow`]), reading the dataset ([`dataset`]), scoring triplets under the newest
//! checkpoint ([`scoring`]), building the index and searching it ([`index`]),
//! decoding thumbnails ([`thumbs`]), starting the trainer process ([`trainer`]), listing the runs folder ([`runs`]). The
//! UI thread never waits on any of them.

pub mod dataset;
pub mod follow;
pub mod index;
pub mod runs;
pub mod scoring;
pub mod thumbs;
pub mod trainer;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::app::WorkerEvent;

// The entry points the runtime and the commands start workers with.
pub use dataset::spawn_dataset;
pub use follow::spawn_follower;
pub use index::{IndexWorker, index_status};
pub use runs::RunsWorker;
pub use scoring::spawn_scorer;
pub use thumbs::ThumbWorker;
pub use trainer::spawn_trainer;

/// Sends to the UI's event loop; a closed UI ends the worker quietly. Sending never
/// blocks (the channel is unbounded: the UI drains it every turn of its loop), so
/// workers on plain threads need no runtime.
#[derive(Clone)]
pub struct Outbox(pub UnboundedSender<WorkerEvent>);

impl Outbox {
    /// An outbox and the end the UI reads.
    pub fn channel() -> (Self, UnboundedReceiver<WorkerEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub fn send(&self, e: WorkerEvent) -> bool {
        self.0.send(e).is_ok()
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

pub use crate::run::settings::load_or as run_config;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

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
