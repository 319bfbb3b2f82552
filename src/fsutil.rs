//! Crash-safe file writes: write a sibling temporary file, fsync, rename, fsync the
//! folder. Temporary names are unpredictable and created exclusively (never through
//! a planted symlink), and carry the writer's PID so that leftovers of dead writers
//! can be recognised and removed ([`remove_stale_temps`]).
//!
//! Two fault hooks, read from the environment, let tests crash or fail a writer at a
//! chosen point (see [`fault_write`] and [`crash_point`]); unset, they cost one
//! environment lookup per file written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Marks vitrine's temporary files: `.NAME.vitrine-PID-RANDOM.tmp`.
const TEMP_TAG: &str = ".vitrine-";
const TEMP_SUFFIX: &str = ".tmp";

/// Makes every write of a file whose name contains this value fail as a full disk.
pub const FAULT_WRITE_ENV: &str = "VITRINE_FAULT_WRITE";
/// Makes the process stop (sleep until killed) at the named [`crash_point`].
pub const FAULT_HANG_ENV: &str = "VITRINE_FAULT_HANG_AT";
/// A file written when the process reaches the hang point (for the test to see).
pub const FAULT_MARKER_ENV: &str = "VITRINE_FAULT_MARKER";

/// Fails like a full disk when [`FAULT_WRITE_ENV`] names part of `path`'s file name.
pub fn fault_write(path: &Path) -> io::Result<()> {
    let Ok(pattern) = std::env::var(FAULT_WRITE_ENV) else {
        return Ok(());
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    if !pattern.is_empty() && name.is_some_and(|n| n.contains(&pattern)) {
        // ENOSPC, so the message is the one a full disk gives.
        return Err(io::Error::from_raw_os_error(28));
    }
    Ok(())
}

/// Where a test may freeze the process to kill it there: when [`FAULT_HANG_ENV`] is
/// `name` or `name@N` (the `N`th time this point is reached), writes the marker
/// file and sleeps until killed.
pub fn crash_point(name: &str) {
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let Ok(want) = std::env::var(FAULT_HANG_ENV) else {
        return;
    };
    let (point, nth) = match want.split_once('@') {
        Some((p, n)) => (p, n.parse().unwrap_or(1)),
        None => (want.as_str(), 1),
    };
    if point != name || REACHED.fetch_add(1, Ordering::SeqCst) + 1 != nth {
        return;
    }
    if let Ok(marker) = std::env::var(FAULT_MARKER_ENV) {
        let _ = fs::write(marker, name);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// A random-enough token: time, PID and a counter through a 64-bit mixer.
fn token() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A fresh temporary sibling name for `path` (not yet created).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(
        "{TEMP_TAG}{}-{:016x}{TEMP_SUFFIX}",
        std::process::id(),
        token()
    ));
    path.with_file_name(name)
}

/// The PID in a temporary name made by [`temp_path`].
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_suffix(TEMP_SUFFIX)?;
    let (_, tail) = rest.rsplit_once(TEMP_TAG)?;
    tail.split_once('-')?.0.parse().ok()
}

/// Removes vitrine temporary files in `dir` whose writer is dead (a crash or a kill
/// mid-write); returns how many. Files of live writers are left alone.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if pid != std::process::id() && !crate::pid::alive(pid) {
            let path = e.path();
            let gone = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if gone.is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Flushes a folder's entries (renames, creations) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A file written and synced under a temporary name, not yet in place. Dropped
/// without [`Staged::commit`], it is removed.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Staged {
    /// Writes `write`'s output to a fresh temporary sibling of `path` and syncs it.
    pub fn write<F>(path: &Path, write: F) -> io::Result<Self>
    where
        F: FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
    {
        fs::create_dir_all(parent_of(path))?;
        fault_write(path)?;
        let tmp = temp_path(path);
        // `create_new` refuses an existing name, a planted symlink included.
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let staged = Self {
            tmp,
            path: path.to_path_buf(),
            done: false,
        };
        let mut out = io::BufWriter::new(file);
        write(&mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(staged)
    }

    pub fn bytes(path: &Path, bytes: &[u8]) -> io::Result<Self> {
        Self::write(path, |w| w.write_all(bytes))
    }

    /// The file's final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file into place (not yet durable: see [`sync_dir`]).
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes through `write` into a temporary file and renames it over `path`, so a
/// crash at any moment leaves either the old file or the new one.
pub fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
{
    Staged::write(path, write)?.commit()?;
    sync_dir(parent_of(path))
}

/// Atomically replaces `path` with `bytes`.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Opens `path` for reading only if it is a regular file. A FIFO (named pipe) would
/// block in `open()` until a writer came, a device could stream forever: both are
/// refused as "not a regular file". On Linux the open itself does not block
/// (`O_NONBLOCK`, no effect on regular files) and the check is on the opened handle,
/// so a file swapped in between cannot slip past it.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_with(OpenOptions::new().read(true), path)
}

/// [`open_regular`] with other options (a lock file opened to write, created).
pub fn open_regular_with(opts: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000;
        opts.custom_flags(O_NONBLOCK);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    if fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(not_regular());
    }
    let file = opts.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

fn not_regular() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "not a regular file (a named pipe, device or folder)",
    )
}

/// The whole of a small regular file (a config, a control file): refused when it is
/// not a regular file ([`open_regular`]) or holds more than `max` bytes, so a link to
/// `/dev/zero` or a huge file cannot exhaust memory.
pub fn read_small(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// [`read_small`] as UTF-8 text.
pub fn read_small_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_small(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// `p` made absolute against the current directory (not resolving links), as a
/// settings file must name paths that still hold from another folder.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A stable 64-bit FNV-1a hash, used for fingerprints of configs and weights.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_cleans_up_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.bin");
        write_bytes_atomic(&p, b"one").expect("write");
        let err = write_atomic(&p, |_| Err(io::Error::other("boom")));
        assert!(err.is_err());
        assert_eq!(fs::read(&p).expect("read"), b"one");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
        assert_ne!(fnv1a64(b"a"), fnv1a64(b"b"));
    }

    #[test]
    fn temp_names_differ_and_a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.bin");
        assert_ne!(temp_path(&p), temp_path(&p));
        assert_eq!(
            temp_owner(&temp_path(&p).file_name().expect("name").to_string_lossy()),
            Some(std::process::id())
        );
        // The old predictable name, planted as a symlink to a victim, is not written.
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").expect("victim");
        std::os::unix::fs::symlink(
            &victim,
            dir.path().join(format!("a.bin.{}.tmp", std::process::id())),
        )
        .expect("symlink");
        write_bytes_atomic(&p, b"new").expect("write");
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
        assert_eq!(fs::read(&p).expect("read"), b"new");
    }

    #[test]
    fn stale_temps_of_dead_writers_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        // PID 4194304 is above Linux's pid_max: never alive.
        let dead = dir.path().join(".a.bin.vitrine-4194304-00ff.tmp");
        let live = temp_path(&dir.path().join("b.bin"));
        let other = dir.path().join("c.tmp");
        for f in [&dead, &live, &other] {
            fs::write(f, b"x").expect("write");
        }
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert!(!dead.exists() && live.exists() && other.exists());
    }

    #[test]
    fn small_reads_take_regular_files_within_their_cap_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        fs::write(&p, b"abc").expect("write");
        assert_eq!(read_small(&p, 3).expect("read"), b"abc");
        let e = read_small(&p, 2).expect_err("too large");
        assert!(e.to_string().contains("larger than 2 bytes"), "{e}");
        assert!(read_small(dir.path(), 10).is_err(), "a folder");
        // A device that never ends is not read at all.
        let e = read_small(Path::new("/dev/zero"), 10).expect_err("a device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_staged_file_dropped_uncommitted_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("w.bin");
        let staged = Staged::bytes(&p, b"x").expect("stage");
        assert!(!p.exists());
        drop(staged);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
        let staged = Staged::bytes(&p, b"y").expect("stage");
        staged.commit().expect("commit");
        assert_eq!(fs::read(&p).expect("read"), b"y");
    }
}
