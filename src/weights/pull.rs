//! `vitrine weights pull`: a repo's weights file from the Hub into the cache,
//! verified before it is put there.
//!
//! 1. The file list and checksums: `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`
//!    (the call huggingface_hub's `model_info(files_metadata=True)` makes). The file
//!    taken is `model.safetensors`, else the repo's only top-level `.safetensors`;
//!    its expected sha256 is the LFS object id the API lists (`siblings[].lfs.sha256`,
//!    the same value the file's `x-linked-etag` header carries).
//! 2. A blob with that sha256 already in the cache (pulled before, or by Python) is
//!    hashed and reused: nothing is downloaded.
//! 3. Otherwise hf-hub downloads into a staging cache, `HUB/.locks/vitrine/` (on
//!    the cache's file system, in the folder huggingface_hub's cache scan skips),
//!    under a per-repo lock; an interrupted pull resumes from its partial file.
//! 4. The download's size and sha256 must match the API's; only then is it renamed
//!    into `blobs/`, linked from `snapshots/COMMIT/` and named by `refs/REVISION`.
//!    The staging folder is removed whatever happened, so a failed or damaged
//!    download leaves nothing in the cache.
//!
//! When the Hub cannot be reached but the cache has the revision, that copy is
//! used (as huggingface_hub does); with `HF_HUB_OFFLINE=1` the Hub is not asked.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use super::cache::{CachedWeights, HubCache, hf_home, is_sha256, sha256_file};
use super::source::{HUB_PREFIX, HubRef};
use super::{WEIGHTS_FILE, WeightsError, io_at};

/// The Hub, unless `HF_ENDPOINT` names another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Resumed attempts after a download breaks off.
const RETRIES: usize = 3;
/// The file-list request: a stalled network is an error, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const INFO_TIMEOUT: Duration = Duration::from_secs(60);

/// What the environment says about the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// `HF_ENDPOINT` (no trailing slash).
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file huggingface_hub's login writes
    /// (`HF_TOKEN_PATH`, else `HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` is set (1, true, yes, on): the cache only.
    pub offline: bool,
}

impl PullOptions {
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .or_else(|| hf_home().ok().map(|h| h.join("token")))?;
            let text = fs::read_to_string(path).ok()?;
            Some(text.trim().to_owned()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Self {
            endpoint,
            token,
            offline,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub weights: CachedWeights,
    /// Whether the file came over the network (false: the cache had it).
    pub downloaded: bool,
    /// Why the cached copy was used without asking the Hub, when it was not asked.
    pub offline: Option<String>,
}

/// The repo's file list, as the API gives it with `blobs=true`.
#[derive(Debug, Deserialize)]
struct RepoInfo {
    /// The commit the revision points to.
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// Brings `r`'s weights file into `cache` (see the module notes), calling
/// `progress(done, total)` in bytes while downloading.
pub fn pull(
    cache: &HubCache,
    r: &HubRef,
    opts: &PullOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Pulled, WeightsError> {
    let spec = format!("{HUB_PREFIX}{r}");
    if opts.offline {
        let weights = cache.resolve(r).map_err(|e| match e {
            WeightsError::NotCached { spec, hub, command } => {
                WeightsError::OfflineNotCached { spec, hub, command }
            }
            other => other,
        })?;
        return Ok(Pulled {
            weights,
            downloaded: false,
            offline: Some("HF_HUB_OFFLINE is set".into()),
        });
    }
    let api = api_for(Cache::new(cache.root().to_owned()), opts)?;
    let info = match fetch_info(&api, r, opts) {
        Ok(info) => info,
        Err(WeightsError::Unreachable { endpoint, detail }) => {
            // Offline first: the cached revision serves, as in huggingface_hub.
            if let Ok(weights) = cache.resolve(r) {
                return Ok(Pulled {
                    weights,
                    downloaded: false,
                    offline: Some(format!("cannot reach {endpoint} ({detail})")),
                });
            }
            return Err(WeightsError::Unreachable { endpoint, detail });
        }
        Err(e) => return Err(e),
    };
    let (file, lfs) = weights_entry(&info, &spec)?;
    let sha256 = lfs.sha256.to_ascii_lowercase();
    if !is_sha256(&sha256) {
        return Err(WeightsError::BadAnswer {
            url: info_url(opts, r),
            reason: format!("`{}` is not a sha256", lfs.sha256),
        });
    }
    let done = |path: PathBuf, downloaded: bool| Pulled {
        weights: CachedWeights {
            repo: r.clone(),
            commit: info.sha.clone(),
            file: file.to_owned(),
            path,
            size: lfs.size,
            sha256: Some(sha256.clone()),
        },
        downloaded,
        offline: None,
    };

    let blob = cache.blob_path(&r.repo, &sha256);
    if blob.is_file() && sha256_file(&blob).is_ok_and(|s| s == sha256) {
        let path = cache.publish(r, &info.sha, file, &sha256, None)?;
        return Ok(done(path, false));
    }

    let staging = Staging::lock(cache, r, &spec)?;
    let api = api_for(Cache::new(staging.root.clone()), opts)?;
    let repo = api.repo(Repo::with_revision(
        r.repo.clone(),
        RepoType::Model,
        r.revision.clone(),
    ));
    let pointer = repo
        .download_with_progress(file, Reporter::new(progress))
        .map_err(|e| download_error(e, r, opts, &spec, file))?;
    let staged_commit = pointer
        .parent()
        .and_then(Path::file_name)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    if staged_commit != info.sha {
        return Err(WeightsError::Moved {
            spec,
            before: info.sha.clone(),
            after: staged_commit,
        });
    }
    let staged = fs::canonicalize(&pointer).map_err(io_at(&pointer))?;
    let size = fs::metadata(&staged).map_err(io_at(&staged))?.len();
    let actual = sha256_file(&staged).map_err(io_at(&staged))?;
    if actual != sha256 || size != lfs.size {
        return Err(WeightsError::Checksum {
            spec,
            file: file.to_owned(),
            expected: sha256,
            actual,
            size,
            expected_size: lfs.size,
        });
    }
    if staged.file_name().and_then(|n| n.to_str()) != Some(sha256.as_str()) {
        // hf-hub names its download by the x-linked-etag header, which the Hub sets
        // to the same LFS sha256; the content matched the API, so it is kept.
        tracing::warn!(
            "{spec}: the file's etag ({}) differs from its LFS sha256 {sha256}",
            staged.display()
        );
    }
    let path = cache.publish(r, &info.sha, file, &sha256, Some(&staged))?;
    drop(staging);
    Ok(done(path, true))
}

fn api_for(cache: Cache, opts: &PullOptions) -> Result<Api, WeightsError> {
    ApiBuilder::from_cache(cache)
        .with_endpoint(opts.endpoint.clone())
        .with_token(opts.token.clone())
        .with_progress(false)
        .with_retries(RETRIES)
        .with_user_agent("vitrine", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| WeightsError::Unreachable {
            endpoint: opts.endpoint.clone(),
            detail: e.to_string(),
        })
}

fn info_url(opts: &PullOptions, r: &HubRef) -> String {
    format!(
        "{}/api/models/{}/revision/{}",
        opts.endpoint,
        r.repo,
        r.revision.replace('/', "%2F")
    )
}

fn fetch_info(api: &Api, r: &HubRef, opts: &PullOptions) -> Result<RepoInfo, WeightsError> {
    let url = info_url(opts, r);
    let repo = api.repo(Repo::with_revision(
        r.repo.clone(),
        RepoType::Model,
        r.revision.clone(),
    ));
    let mut response = repo
        .info_request()
        .query("blobs", "true")
        .config()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(INFO_TIMEOUT))
        .build()
        .call()
        .map_err(|e| WeightsError::Unreachable {
            endpoint: opts.endpoint.clone(),
            detail: e.to_string(),
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        let code = response
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        return Err(status_error(r, opts, status, &code, &url));
    }
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| WeightsError::BadAnswer {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let info: RepoInfo = serde_json::from_str(&text).map_err(|e| WeightsError::BadAnswer {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    // The commit becomes a folder name in the cache.
    if info.sha.is_empty() || !info.sha.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(WeightsError::BadAnswer {
            url,
            reason: format!("`{}` is not a commit hash", info.sha),
        });
    }
    Ok(info)
}

/// The Hub's refusals, by status and its `x-error-code` header.
fn status_error(
    r: &HubRef,
    opts: &PullOptions,
    status: u16,
    code: &str,
    url: &str,
) -> WeightsError {
    let token_set = opts.token.is_some();
    match (status, code) {
        (401 | 403, "GatedRepo") | (403, _) => WeightsError::Gated {
            repo: r.repo.clone(),
            status,
            token_set,
        },
        (401, _) => WeightsError::Unauthorized {
            repo: r.repo.clone(),
            endpoint: opts.endpoint.clone(),
            token_set,
        },
        (404, "RevisionNotFound") => WeightsError::RevisionNotFound {
            repo: r.repo.clone(),
            revision: r.revision.clone(),
            endpoint: opts.endpoint.clone(),
        },
        (404, _) => WeightsError::RepoNotFound {
            repo: r.repo.clone(),
            endpoint: opts.endpoint.clone(),
        },
        _ => WeightsError::Http {
            url: url.to_owned(),
            status,
        },
    }
}

/// The file to take and its LFS entry.
fn weights_entry<'a>(info: &'a RepoInfo, spec: &str) -> Result<(&'a str, &'a Lfs), WeightsError> {
    let top_level: Vec<&Sibling> = info
        .siblings
        .iter()
        .filter(|s| !s.rfilename.contains('/'))
        .collect();
    let safetensors: Vec<&Sibling> = top_level
        .iter()
        .copied()
        .filter(|s| s.rfilename.ends_with(".safetensors"))
        .collect();
    let names = |list: &[&Sibling]| {
        let shown: Vec<&str> = list.iter().take(12).map(|s| s.rfilename.as_str()).collect();
        let more = list.len().saturating_sub(shown.len());
        let mut text = shown.join(", ");
        if more > 0 {
            let _ = write!(text, ", … ({more} more)");
        }
        if text.is_empty() {
            text = "none".into();
        }
        text
    };
    let chosen = match safetensors.iter().find(|s| s.rfilename == WEIGHTS_FILE) {
        Some(s) => *s,
        None if safetensors.len() == 1 => safetensors[0],
        None if safetensors.is_empty() => {
            return Err(WeightsError::NoSafetensors {
                spec: spec.to_owned(),
                files: names(&top_level),
            });
        }
        None => {
            return Err(WeightsError::Ambiguous {
                spec: spec.to_owned(),
                files: names(&safetensors),
            });
        }
    };
    let lfs = chosen
        .lfs
        .as_ref()
        .ok_or_else(|| WeightsError::NoChecksum {
            spec: spec.to_owned(),
            file: chosen.rfilename.clone(),
        })?;
    Ok((chosen.rfilename.as_str(), lfs))
}

fn download_error(
    e: ApiError,
    r: &HubRef,
    opts: &PullOptions,
    spec: &str,
    file: &str,
) -> WeightsError {
    let detail = match e {
        ApiError::TooManyRetries(inner) => return download_error(*inner, r, opts, spec, file),
        ApiError::RequestError(e) => match *e {
            ureq::Error::StatusCode(status) => {
                return status_error(r, opts, status, "", &format!("{spec}: {file}"));
            }
            other => format!("{other} (from {})", opts.endpoint),
        },
        ApiError::MissingHeader(h) => {
            format!("the Hub's answer has no `{h}` header (is HF_ENDPOINT a Hugging Face Hub?)")
        }
        ApiError::LockAcquisition(lock) => {
            return WeightsError::Busy {
                spec: spec.to_owned(),
                lock,
            };
        }
        other => other.to_string(),
    };
    WeightsError::Download {
        spec: spec.to_owned(),
        file: file.to_owned(),
        detail,
    }
}

/// The staging cache of one repo's pull, locked for its lifetime and removed when
/// dropped (success or not).
struct Staging {
    /// hf-hub's cache root: `HUB/.locks/vitrine`.
    root: PathBuf,
    /// `HUB/.locks/vitrine/models--OWNER--NAME`, what is removed.
    repo_dir: PathBuf,
    _lock: fs::File,
}

impl Staging {
    fn lock(cache: &HubCache, r: &HubRef, spec: &str) -> Result<Self, WeightsError> {
        let root = cache.root().join(".locks").join("vitrine");
        fs::create_dir_all(&root).map_err(io_at(&root))?;
        let folder = Repo::model(r.repo.clone()).folder_name();
        let lock_path = root.join(format!("{folder}.lock"));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(WeightsError::Busy {
                    spec: spec.to_owned(),
                    lock: lock_path,
                });
            }
            Err(fs::TryLockError::Error(cause)) => {
                return Err(WeightsError::Io {
                    path: lock_path,
                    cause,
                });
            }
        }
        Ok(Self {
            repo_dir: root.join(folder),
            root,
            _lock: lock,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Before the lock goes (fields drop after this body).
        let _ = fs::remove_dir_all(&self.repo_dir);
    }
}

/// hf-hub's progress calls as `(done, total)` bytes.
struct Reporter<'a> {
    report: &'a mut dyn FnMut(u64, u64),
    done: u64,
    total: u64,
}

impl<'a> Reporter<'a> {
    fn new(report: &'a mut dyn FnMut(u64, u64)) -> Self {
        Self {
            report,
            done: 0,
            total: 0,
        }
    }
}

impl hf_hub::api::Progress for Reporter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        self.done = 0;
        (self.report)(0, self.total);
    }

    fn update(&mut self, size: usize) {
        // hf-hub reports every read, the final empty one too.
        if size == 0 {
            return;
        }
        self.done += size as u64;
        (self.report)(self.done, self.total);
    }

    fn finish(&mut self) {}
}
