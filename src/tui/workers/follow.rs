//! Follows the run folder: `metrics.jsonl`, the trainer's lock and control file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Outbox;
use crate::train::metrics_log::MetricsFollower;
use crate::train::run_dir::RunDir;
use crate::tui::app::WorkerEvent;

/// How often the run folder is polled.
pub const POLL: Duration = Duration::from_millis(200);
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
