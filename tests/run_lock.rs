//! The run lock is an OS lock: a file left by a dead (or reused) PID is no lock, and of
//! many processes racing for one run exactly one wins.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vitrine::run::folder::{RunDir, RunError};

const RACE_ENV: &str = "VITRINE_LOCK_RACE_DIR";

/// Run by the race below in child processes; does nothing in a normal test run.
#[test]
fn lock_race_child() {
    let Ok(dir) = std::env::var(RACE_ENV) else {
        return;
    };
    let go = Path::new(&dir).join("go");
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    match RunDir::new(Path::new(&dir)).lock() {
        Ok(lock) => {
            println!("RACE WON {}", std::process::id());
            // Hold it while the others try.
            std::thread::sleep(Duration::from_millis(1500));
            drop(lock);
        }
        Err(RunError::Locked { pid: Some(pid), .. }) => println!("RACE LOST to {pid}"),
        Err(RunError::Locked { pid: None, .. }) => println!("RACE LOST to an unnamed holder"),
        Err(e) => println!("RACE ERROR {e}"),
    }
}

#[test]
fn a_stale_lock_file_is_no_lock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = RunDir::new(&tmp.path().join("run"));
    run.create().expect("create");
    // A PID that is alive (this very process) but holds no OS lock: a reused PID.
    std::fs::write(run.root.join("lock"), std::process::id().to_string()).expect("write");
    assert_eq!(run.locked_by(), None);
    let lock = run.lock().expect("taken over");
    assert_eq!(run.locked_by(), Some(std::process::id()));
    // A second taker in this process is refused too (the OS lock is per open file).
    assert!(matches!(run.lock(), Err(RunError::Locked { .. })));
    drop(lock);
    assert_eq!(run.locked_by(), None);
    assert!(run.lock().is_ok());
}

#[test]
fn of_many_processes_racing_for_a_stale_lock_exactly_one_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let run = RunDir::new(&dir);
    run.create().expect("create");
    std::fs::write(dir.join("lock"), "4194304").expect("stale lock");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "lock_race_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(RACE_ENV, &dir)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.join("go"), "").expect("go");
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let won: Vec<&String> = outputs.iter().filter(|o| o.contains("RACE WON")).collect();
    let lost = outputs.iter().filter(|o| o.contains("RACE LOST")).count();
    assert_eq!(won.len(), 1, "{outputs:#?}");
    assert_eq!(lost, 7, "{outputs:#?}");
    // The losers name the winner.
    // (libtest prints "test lock_race_child ... " on the same line.)
    let winner: String = won[0]
        .split("RACE WON ")
        .nth(1)
        .expect("pid")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(
        outputs
            .iter()
            .filter(|o| o.contains("RACE LOST"))
            .all(|o| o.contains(&format!("RACE LOST to {winner}"))),
        "{outputs:#?}"
    );
    assert_eq!(run.locked_by(), None, "released when the winner exits");
}

#[test]
fn observers_probing_the_lock_never_refuse_the_only_trainer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = RunDir::new(&tmp.path().join("run"));
    run.create().expect("create");
    let stop = Arc::new(AtomicBool::new(false));
    // Readers (`runs`, `watch`, the dashboard) probing as fast as they can; flock
    // locks belong to open files, so threads race exactly as processes do.
    let observers: Vec<_> = (0..3)
        .map(|_| {
            let (run, stop) = (run.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.insert(run.locked_by());
                }
                seen
            })
        })
        .collect();
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..150 {
        match run.lock() {
            Ok(lock) => drop(lock),
            Err(e) => failures.push(format!("start {i}: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let me = Some(std::process::id());
    for o in observers {
        let seen = o.join().expect("observer");
        assert!(seen.iter().all(|p| p.is_none() || *p == me), "{seen:?}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_named_pipe_as_the_lock_is_neither_waited_on_nor_taken() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = RunDir::new(&tmp.path().join("run"));
    run.create().expect("create");
    let lock = run.root.join("lock");
    if !Command::new("mkfifo")
        .arg(&lock)
        .status()
        .is_ok_and(|s| s.success())
    {
        println!("skipped: no mkfifo");
        return;
    }
    // On threads with a deadline: a regression blocks in open() instead of failing.
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = run.clone();
    std::thread::spawn(move || {
        let _ = tx.send((
            probe.locked_by(),
            probe.lock().map(drop).map_err(|e| e.to_string()),
        ));
    });
    let (holder, taken) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the lock probe hung on a named pipe");
    assert_eq!(holder, None);
    let err = taken.expect_err("a pipe is no lock file");
    assert!(
        err.contains("lock") && err.contains("not a regular file"),
        "{err}"
    );
}
