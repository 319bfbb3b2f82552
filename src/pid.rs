//! PIDs that files name: the writer of a temporary file, the holder of a lock file.
//! A lock file's OS lock (`flock`) says whether it is held; the PID in it only says
//! by whom, and may still name an earlier holder that died without emptying it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether a process with this PID exists. Without `/proc` (off Linux) every PID
/// counts as alive: nothing is then taken for stale.
pub fn alive(pid: u32) -> bool {
    pid == std::process::id()
        || !Path::new("/proc/self").exists()
        || Path::new(&format!("/proc/{pid}")).exists()
}

/// The PID in a lock file (read from the open handle: no second open, at most a
/// few bytes); `None` when empty, not a number, or 0.
fn written(file: &File) -> Option<u32> {
    let mut buf = [0u8; 24];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid != 0)
}

/// What [`holder`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The lock was let go while waiting.
    Released,
    /// The live process the file names.
    Named(u32),
    /// Held, but no live PID showed: the file names a PID this process cannot see
    /// (another PID namespace; given after [`DEAD_PID_GRACE`]), or none at all in the
    /// whole wait (not a vitrine process).
    Unnamed(Option<u32>),
}

impl Holder {
    /// The PID to show for the holder, if any.
    pub fn pid(self) -> Option<u32> {
        match self {
            Self::Named(pid) | Self::Unnamed(Some(pid)) => Some(pid),
            Self::Released | Self::Unnamed(None) => None,
        }
    }
}

/// How long a PID of no live process is given to be replaced by the holder's own
/// before it is taken as the holder's (one in another PID namespace, e.g. a trainer
/// in a container): the holder writes within microseconds of taking the lock.
const DEAD_PID_GRACE: Duration = Duration::from_millis(250);

/// The PID of the process holding a locked file. A holder writes its PID right after
/// taking the lock, so until then the file is empty (waited out up to `wait`) or names
/// a dead earlier holder (waited out up to [`DEAD_PID_GRACE`] within `wait`). `held`
/// is asked before each look and ends the wait with [`Holder::Released`] once it says
/// no.
pub fn holder(file: &File, wait: Duration, mut held: impl FnMut() -> bool) -> Holder {
    let start = Instant::now();
    loop {
        if !held() {
            return Holder::Released;
        }
        let waited = start.elapsed();
        match written(file) {
            Some(pid) if alive(pid) => return Holder::Named(pid),
            Some(pid) if waited >= DEAD_PID_GRACE.min(wait) => {
                return Holder::Unnamed(Some(pid));
            }
            _ if waited >= wait => return Holder::Unnamed(None),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_dead_pid_is_waited_out_until_the_live_holder_writes_its_own() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("lock");
        // PID 4194304 is above Linux's largest pid_max: never alive.
        std::fs::write(&path, "4194304").expect("write");
        let file = File::open(&path).expect("open");
        assert!(!alive(4_194_304) || !Path::new("/proc/self").exists());
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open");
                f.set_len(0).expect("truncate");
                write!(f, "{}", std::process::id()).expect("write");
            })
        };
        let found = holder(&file, Duration::from_secs(5), || true);
        writer.join().expect("writer");
        assert_eq!(found, Holder::Named(std::process::id()));
        // Nobody writes: the dead PID is what the file says (a holder this process
        // cannot see), after a short grace, not the whole wait.
        std::fs::write(&path, "4194304").expect("write");
        if Path::new("/proc/self").exists() {
            let t = Instant::now();
            assert_eq!(
                holder(&file, Duration::from_secs(30), || true),
                Holder::Unnamed(Some(4_194_304))
            );
            assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        }
        // An empty file is waited on for the whole wait.
        std::fs::write(&path, "").expect("write");
        assert_eq!(
            holder(&file, Duration::from_millis(20), || true),
            Holder::Unnamed(None)
        );
        assert_eq!(
            holder(&file, Duration::from_secs(5), || false),
            Holder::Released
        );
    }
}
