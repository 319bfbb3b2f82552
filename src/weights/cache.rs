//! The Hugging Face cache folder, in huggingface_hub's own layout, so that a file
//! pulled by either tool is found by the other:
//!
//! ```text
//! HUB/models--OWNER--NAME/blobs/SHA256                 the file (LFS files are named by their sha256)
//! HUB/models--OWNER--NAME/snapshots/COMMIT/FILE        → ../../blobs/SHA256 (a relative symlink)
//! HUB/models--OWNER--NAME/refs/REVISION                the commit REVISION pointed to
//! ```
//!
//! `HUB` is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//! Reading it never uses the network.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::source::HubRef;
use super::{WEIGHTS_FILE, WeightsError, io_at};
use crate::fsutil::{temp_path, write_bytes_atomic};

/// A repo's weights file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedWeights {
    pub repo: HubRef,
    pub commit: String,
    /// The file's name in the repo (`model.safetensors`).
    pub file: String,
    /// `HUB/models--…/snapshots/COMMIT/FILE`.
    pub path: PathBuf,
    pub size: u64,
    /// The sha256 its blob is named by (`None` for a copy that is not a link to a
    /// blob named so, e.g. on a file system without symlinks).
    pub sha256: Option<String>,
}

impl CachedWeights {
    /// Hashes the file against the sha256 its blob is named by.
    pub fn verify(&self) -> Result<(), WeightsError> {
        let Some(expected) = &self.sha256 else {
            return Ok(());
        };
        let actual = sha256_file(&self.path).map_err(io_at(&self.path))?;
        if &actual == expected {
            Ok(())
        } else {
            Err(WeightsError::Corrupt {
                path: self.path.clone(),
                expected: expected.clone(),
                actual,
                command: self.repo.pull_command(),
            })
        }
    }
}

/// The cache folder (`HUB` above).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
}

impl HubCache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, as
    /// huggingface_hub chooses it.
    pub fn from_env() -> Result<Self, WeightsError> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(hub) = var("HF_HUB_CACHE") {
            return Ok(Self::new(hub.into()));
        }
        Ok(Self::new(hf_home()?.join("hub")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `HUB/models--OWNER--NAME`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(hf_hub::Repo::model(repo.to_owned()).folder_name())
    }

    /// Where a blob of `repo` with this sha256 lives.
    pub fn blob_path(&self, repo: &str, sha256: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(sha256)
    }

    /// The commit `r` points to in the cache: the revision itself when it is a
    /// commit with a snapshot, else what `refs/REVISION` holds.
    pub fn commit(&self, r: &HubRef) -> Option<String> {
        let dir = self.repo_dir(&r.repo);
        if r.is_commit() && dir.join("snapshots").join(&r.revision).is_dir() {
            return Some(r.revision.clone());
        }
        let text = fs::read_to_string(dir.join("refs").join(&r.revision)).ok()?;
        let commit = text.trim();
        // It names a folder: a commit hash, nothing that could leave `snapshots/`.
        (!commit.is_empty() && commit.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| commit.to_owned())
    }

    /// `r`'s weights file if the cache has it (not verified: see [`Self::resolve`]).
    pub fn find(&self, r: &HubRef) -> Option<CachedWeights> {
        let commit = self.commit(r)?;
        let snapshot = self.repo_dir(&r.repo).join("snapshots").join(&commit);
        let file = weights_file_in(&snapshot)?;
        let path = snapshot.join(&file);
        let size = fs::metadata(&path).ok()?.len();
        let sha256 = fs::read_link(&path)
            .ok()
            .and_then(|target| target.file_name()?.to_str().map(str::to_owned))
            .filter(|name| is_sha256(name));
        Some(CachedWeights {
            repo: r.clone(),
            commit,
            file,
            path,
            size,
            sha256,
        })
    }

    /// `r`'s weights file from the cache alone, verified against its sha256; the
    /// error names the command that fetches it.
    pub fn resolve(&self, r: &HubRef) -> Result<CachedWeights, WeightsError> {
        let found = self.find(r).ok_or_else(|| WeightsError::NotCached {
            spec: format!("{}{r}", super::source::HUB_PREFIX),
            hub: self.root.clone(),
            command: r.pull_command(),
        })?;
        found.verify()?;
        Ok(found)
    }

    /// Every model repo revision in the cache that has a weights file, sorted by
    /// repo and revision. A snapshot no ref points to is listed under its commit.
    pub fn list(&self) -> Vec<CachedWeights> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.root) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(repo) = name
                .to_str()
                .and_then(|n| n.strip_prefix("models--"))
                .map(|r| r.replace("--", "/"))
            else {
                continue;
            };
            let dir = e.path();
            let mut refs = Vec::new();
            ref_names(&dir.join("refs"), "", &mut refs);
            let mut seen = std::collections::BTreeSet::new();
            for revision in refs {
                let r = HubRef {
                    repo: repo.clone(),
                    revision,
                };
                if let Some(found) = self.find(&r) {
                    seen.insert(found.commit.clone());
                    out.push(found);
                }
            }
            for snap in fs::read_dir(dir.join("snapshots"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let Some(commit) = snap.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if seen.contains(&commit) {
                    continue;
                }
                let r = HubRef {
                    repo: repo.clone(),
                    revision: commit,
                };
                out.extend(self.find(&r));
            }
        }
        out.sort_by(|a, b| (&a.repo.repo, &a.repo.revision).cmp(&(&b.repo.repo, &b.repo.revision)));
        out
    }

    /// Puts a verified file in place: `staged` (when given) renamed to its blob,
    /// the snapshot's link to the blob, and `refs/REVISION` (unless the revision is a
    /// commit). Each step replaces atomically; returns the snapshot path.
    pub(super) fn publish(
        &self,
        r: &HubRef,
        commit: &str,
        file: &str,
        sha256: &str,
        staged: Option<&Path>,
    ) -> Result<PathBuf, WeightsError> {
        let dir = self.repo_dir(&r.repo);
        let blob = dir.join("blobs").join(sha256);
        if let Some(staged) = staged {
            let blobs = dir.join("blobs");
            fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
            fs::rename(staged, &blob).map_err(io_at(&blob))?;
        }
        let snapshot = dir.join("snapshots").join(commit);
        fs::create_dir_all(&snapshot).map_err(io_at(&snapshot))?;
        let link = snapshot.join(file);
        link_atomic(&blob, &link).map_err(io_at(&link))?;
        if !r.is_commit() {
            let reference = dir.join("refs").join(&r.revision);
            write_bytes_atomic(&reference, commit.as_bytes()).map_err(io_at(&reference))?;
        }
        Ok(link)
    }
}

/// `$HF_HOME`, else `~/.cache/huggingface`.
pub(super) fn hf_home() -> Result<PathBuf, WeightsError> {
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return Ok(home.into());
    }
    std::env::home_dir()
        .filter(|h| !h.as_os_str().is_empty())
        .map(|h| h.join(".cache").join("huggingface"))
        .ok_or(WeightsError::NoHome)
}

/// The weights file of a snapshot folder: `model.safetensors`, else its only
/// `.safetensors` file.
fn weights_file_in(snapshot: &Path) -> Option<String> {
    if snapshot.join(WEIGHTS_FILE).is_file() {
        return Some(WEIGHTS_FILE.to_owned());
    }
    let mut found = fs::read_dir(snapshot)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".safetensors") && snapshot.join(n).is_file());
    let only = found.next()?;
    found.next().is_none().then_some(only)
}

/// Names of the files under `refs/` (branch names may hold slashes).
fn ref_names(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let full = format!("{prefix}{name}");
        if e.path().is_dir() {
            ref_names(&e.path(), &format!("{full}/"), out);
        } else {
            out.push(full);
        }
    }
}

pub(super) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// Lowercase hex of bytes.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Points `link` at `blob` (relative, as huggingface_hub does), replacing whatever
/// was there in one rename. Without symlinks (not Unix) the blob is copied.
fn link_atomic(blob: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = temp_path(link);
    #[cfg(unix)]
    {
        let name = blob.file_name().unwrap_or_default();
        let relative = Path::new("..").join("..").join("blobs").join(name);
        std::os::unix::fs::symlink(relative, &tmp)?;
    }
    #[cfg(not(unix))]
    {
        fs::copy(blob, &tmp)?;
    }
    fs::rename(&tmp, link).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn hub_ref(spec: &str) -> HubRef {
        HubRef::parse(spec).expect("spec")
    }

    /// A cache laid out as huggingface_hub lays it out, by hand.
    fn python_style_cache(hub: &Path, content: &[u8]) -> String {
        let dir = hub.join("models--timm--resnet18.a1_in1k");
        let tmp = dir.join("tmp-content");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(&tmp, content).expect("write");
        let sha = sha256_file(&tmp).expect("sha");
        fs::create_dir_all(dir.join("blobs")).expect("blobs");
        fs::rename(&tmp, dir.join("blobs").join(&sha)).expect("blob");
        let snap = dir.join("snapshots").join(COMMIT);
        fs::create_dir_all(&snap).expect("snap");
        std::os::unix::fs::symlink(format!("../../blobs/{sha}"), snap.join("model.safetensors"))
            .expect("link");
        fs::write(snap.join("config.json"), "{}").expect("config");
        fs::create_dir_all(dir.join("refs")).expect("refs");
        fs::write(dir.join("refs").join("main"), COMMIT).expect("ref");
        sha
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("abc");
        fs::write(&p, b"abc").expect("write");
        assert_eq!(
            sha256_file(&p).expect("sha"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_python_layout_resolves_offline_by_branch_or_commit_and_damage_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = HubCache::new(dir.path().to_owned());
        let sha = python_style_cache(dir.path(), b"weights");
        let found = cache
            .resolve(&hub_ref("timm/resnet18.a1_in1k"))
            .expect("by branch");
        assert_eq!(found.commit, COMMIT);
        assert_eq!(found.file, "model.safetensors");
        assert_eq!(found.size, 7);
        assert_eq!(found.sha256.as_deref(), Some(sha.as_str()));
        let by_commit = cache
            .resolve(&hub_ref(&format!("timm/resnet18.a1_in1k@{COMMIT}")))
            .expect("by commit");
        assert_eq!(by_commit.path, found.path);
        assert_eq!(cache.list().len(), 1, "{:?}", cache.list());

        let missing = cache
            .resolve(&hub_ref("timm/resnet18.a1_in1k@v2"))
            .expect_err("no such ref");
        assert!(
            missing
                .to_string()
                .contains("`vitrine weights pull timm/resnet18.a1_in1k@v2`"),
            "{missing}"
        );

        fs::write(cache.blob_path("timm/resnet18.a1_in1k", &sha), b"weighty").expect("damage");
        let e = cache
            .resolve(&hub_ref("timm/resnet18.a1_in1k"))
            .expect_err("damaged");
        assert!(matches!(e, WeightsError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn publishing_lays_out_what_python_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = HubCache::new(dir.path().join("hub"));
        let staged = dir.path().join("staged");
        fs::write(&staged, b"abc").expect("write");
        let sha = sha256_file(&staged).expect("sha");
        let r = hub_ref("o/n@refs/pr/1");
        let link = cache
            .publish(&r, COMMIT, "model.safetensors", &sha, Some(&staged))
            .expect("publish");
        let repo = dir.path().join("hub/models--o--n");
        assert_eq!(
            fs::read_link(&link).expect("a symlink"),
            Path::new("../../blobs").join(&sha)
        );
        assert_eq!(fs::read(&link).expect("read"), b"abc");
        assert_eq!(
            fs::read_to_string(repo.join("refs/refs/pr/1")).expect("ref"),
            COMMIT
        );
        assert!(!staged.exists());
        let found = cache.resolve(&r).expect("found again");
        assert_eq!(found.path, link);
        // Published again over itself (a second pull): still one clean link.
        cache
            .publish(&r, COMMIT, "model.safetensors", &sha, None)
            .expect("again");
        let names: Vec<_> = fs::read_dir(link.parent().expect("snapshot"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
    }
}
