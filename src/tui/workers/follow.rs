//! Follows the run folder: `metrics.jsonl`, the trainer's lock and control file.
//! Woken by file notifications (inotify on Linux) on the run folder, and reads it
//! every [`FALLBACK_POLL`] as well, so it still follows where notifications do not
//! arrive (a network file system, no inotify watches left, a folder not made yet).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::Outbox;
use crate::run::folder::RunDir;
use crate::train::metrics_log::MetricsFollower;
use crate::tui::app::WorkerEvent;

/// The longest the run folder goes unread when no notification came.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// The files of the run folder the follower reads (`RunDir::metrics`, the lock, the
/// control file); changes to others (the log, checkpoints) do not wake it.
const FOLLOWED: [&str; 3] = ["metrics.jsonl", "lock", "control"];

type Notices = Receiver<notify::Result<Event>>;

/// Follows `RUN/metrics.jsonl` from its first line, and the trainer's lock and
/// control file, until `stop` is set (seen within [`FALLBACK_POLL`]) or the UI is
/// gone.
pub fn spawn_follower(run: &Path, out: Outbox, stop: Arc<AtomicBool>) {
    let run = RunDir::new(run);
    std::thread::Builder::new()
        .name("follow".into())
        .spawn(move || follow(&run, &out, &stop))
        .map_or_else(
            |e| tracing::error!("cannot start the follower thread: {e}"),
            drop,
        );
}

fn follow(run: &RunDir, out: &Outbox, stop: &AtomicBool) {
    let (tx, notices) = std::sync::mpsc::channel();
    let mut watcher: Option<RecommendedWatcher> = None;
    let mut watch_error = None;
    let mut follower = MetricsFollower::new(&run.metrics());
    let mut last = None;
    let mut last_error = None;
    while !stop.load(Ordering::Relaxed) {
        // Watch before reading, so that a change right after the read still wakes us.
        if watcher.is_none() {
            match watch(&run.root, tx.clone()) {
                Ok(w) => {
                    tracing::info!("following {} by file notifications", run.root.display());
                    watcher = Some(w);
                    watch_error = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if watch_error.as_ref() != Some(&msg) {
                        tracing::info!(
                            "no file notifications on {} ({msg}); reading it every {FALLBACK_POLL:?}",
                            run.root.display()
                        );
                        watch_error = Some(msg);
                    }
                }
            }
        }
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
        // A long log replays in bounded reads, one after another without waiting.
        if follower.caught_up() && !wait(&notices, &run.root) {
            // The watch broke (folder removed, notification queue lost): set it up again.
            watcher = None;
        }
    }
}

fn watch(
    root: &Path,
    tx: std::sync::mpsc::Sender<notify::Result<Event>>,
) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(root, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Sleeps until a followed file changes or [`FALLBACK_POLL`] passed, then takes the
/// notifications already queued too (a burst of appends is one read). False when the
/// watch needs setting up again.
fn wait(notices: &Notices, root: &Path) -> bool {
    let deadline = Instant::now() + FALLBACK_POLL;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match notices.recv_timeout(left) {
            Ok(Ok(event)) => match relevance(&event, root) {
                Relevance::Ignore => {}
                Relevance::Changed => break,
                Relevance::WatchLost => return false,
            },
            Ok(Err(e)) => {
                tracing::debug!("file notifications on {}: {e}", root.display());
                return false;
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return true,
        }
    }
    let mut healthy = true;
    while let Ok(notice) = notices.try_recv() {
        if notice.is_err() || notice.is_ok_and(|e| relevance(&e, root) == Relevance::WatchLost) {
            healthy = false;
        }
    }
    healthy
}

#[derive(Debug, PartialEq, Eq)]
enum Relevance {
    Ignore,
    Changed,
    WatchLost,
}

fn relevance(event: &Event, root: &Path) -> Relevance {
    if event.need_rescan() {
        return Relevance::Changed;
    }
    if matches!(event.kind, EventKind::Remove(_)) && event.paths.iter().any(|p| p == root) {
        return Relevance::WatchLost;
    }
    // Opening and reading are not changes, and the follower's own reads make them;
    // a file closed after writing is one (a trainer's lock when it exits).
    let reading = matches!(event.kind, EventKind::Access(kind)
        if kind != AccessKind::Close(AccessMode::Write));
    let followed = event.paths.is_empty()
        || event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| FOLLOWED.iter().any(|f| OsStr::new(f) == n))
        });
    if !reading && followed {
        Relevance::Changed
    } else {
        Relevance::Ignore
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind};

    use super::*;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_to_the_followed_files_wake_the_follower() {
        let root = Path::new("/runs/a");
        let append = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(
            relevance(&event(append, "/runs/a/metrics.jsonl"), root),
            Relevance::Changed
        );
        assert_eq!(
            relevance(&event(append, "/runs/a/vitrine.log"), root),
            Relevance::Ignore
        );
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert_eq!(
            relevance(&event(opened, "/runs/a/metrics.jsonl"), root),
            Relevance::Ignore
        );
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert_eq!(
            relevance(&event(read, "/runs/a/lock"), root),
            Relevance::Ignore
        );
        let exited = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(
            relevance(&event(exited, "/runs/a/lock"), root),
            Relevance::Changed
        );
        let created = EventKind::Create(CreateKind::File);
        assert_eq!(
            relevance(&event(created, "/runs/a/control"), root),
            Relevance::Changed
        );
        let removed = EventKind::Remove(RemoveKind::Folder);
        assert_eq!(
            relevance(&event(removed, "/runs/a"), root),
            Relevance::WatchLost
        );
    }

    #[test]
    fn an_append_wakes_the_follower_long_before_the_fallback_poll() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = std::sync::mpsc::channel();
        let _watcher = watch(dir.path(), tx).expect("inotify watch");
        let metrics = dir.path().join("metrics.jsonl");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(metrics, "{}\n").expect("write");
        });
        let started = Instant::now();
        assert!(wait(&rx, dir.path()));
        let waited = started.elapsed();
        writer.join().expect("writer");
        assert!(waited < FALLBACK_POLL / 2, "woke after {waited:?}");
    }
}
