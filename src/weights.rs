//! Pretrained weights from the Hugging Face Hub.
//!
//! - [`source`]: what `model.pretrained` / `--pretrained` name: a file, or
//!   `hf:OWNER/NAME[@REVISION]`.
//! - [`cache`]: the Hub's cache folder in huggingface_hub's own layout (so files
//!   pulled by Python are found here, and the other way round); resolves a repo to its
//!   file without the network, which is all training ever does.
//! - [`pull`]: `vitrine weights pull`, the only code of vitrine that uses the network:
//!   the repo's file list and LFS sha256 from the Hub's API, the download (hf-hub),
//!   verified before it enters the cache.

pub mod cache;
pub mod pull;
pub mod source;

use std::path::PathBuf;

pub use cache::{CachedWeights, HubCache};
pub use pull::{PullOptions, Pulled, pull};
pub use source::{HubRef, Pretrained};

/// The file vitrine takes from a repo when it has one (timm's name).
pub const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{spec} is not in the Hugging Face cache ({}); fetch it with `{command}`", hub.display())]
    NotCached {
        spec: String,
        hub: PathBuf,
        command: String,
    },
    #[error(
        "{spec} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: unset it and run `{command}`",
        hub.display()
    )]
    OfflineNotCached {
        spec: String,
        hub: PathBuf,
        command: String,
    },
    #[error(
        "{} does not match its sha256 {expected} (it hashes to {actual}): the cached copy is damaged; run `{command}` to fetch it again",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        expected: String,
        actual: String,
        command: String,
    },
    #[error(
        "cannot reach the Hugging Face Hub at {endpoint}: {detail} (offline? check the network, or HF_ENDPOINT)"
    )]
    Unreachable { endpoint: String, detail: String },
    #[error("{repo}: no such model repository on {endpoint} (HTTP 404); check the name")]
    RepoNotFound { repo: String, endpoint: String },
    #[error("{repo} has no revision `{revision}` on {endpoint} (HTTP 404)")]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },
    #[error("{repo}: HTTP 401 from {endpoint}: the repository does not exist, or it is private or gated; {}", token_hint(*token_set))]
    Unauthorized {
        repo: String,
        endpoint: String,
        token_set: bool,
    },
    #[error("{repo} is gated (HTTP {status}): request access on its page on the Hub, then set HF_TOKEN to a token of that account{}", if *token_set { " (the HF_TOKEN given has no access)" } else { "" })]
    Gated {
        repo: String,
        status: u16,
        token_set: bool,
    },
    #[error("{url}: the Hub answered HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{url}: unreadable answer from the Hub: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error(
        "{spec} has no safetensors weights (files: {files}); vitrine reads `model.safetensors` (timm's repositories have one; pickled .bin/.pth files are not read)"
    )]
    NoSafetensors { spec: String, files: String },
    #[error(
        "{spec} has several safetensors files and no `model.safetensors` ({files}); vitrine takes `model.safetensors` or a repo's only .safetensors file"
    )]
    Ambiguous { spec: String, files: String },
    #[error(
        "{spec}: the Hub lists no LFS sha256 for {file}, so it cannot be verified; not downloaded"
    )]
    NoChecksum { spec: String, file: String },
    #[error(
        "{spec}: the downloaded {file} has sha256 {actual} ({size} bytes) but the Hub lists {expected} ({expected_size} bytes); nothing was kept in the cache, run the command again"
    )]
    Checksum {
        spec: String,
        file: String,
        expected: String,
        actual: String,
        size: u64,
        expected_size: u64,
    },
    #[error(
        "{spec} changed on the Hub during the download (commit {before}, then {after}); run the command again"
    )]
    Moved {
        spec: String,
        before: String,
        after: String,
    },
    #[error("{spec}: downloading {file} failed: {detail}; nothing was kept in the cache")]
    Download {
        spec: String,
        file: String,
        detail: String,
    },
    #[error("another `vitrine weights pull` of {spec} is running (lock {})", lock.display())]
    Busy { spec: String, lock: PathBuf },
    #[error(
        "no Hugging Face cache folder: set HF_HOME (or HF_HUB_CACHE), as no home folder is known"
    )]
    NoHome,
    // `cause`, not `source`: the OS message is part of this one-line error, not a
    // second cause for anyhow to print after it again.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

fn token_hint(token_set: bool) -> &'static str {
    if token_set {
        "the HF_TOKEN given has no access to it"
    } else {
        "check the name, or set HF_TOKEN to a token that has access"
    }
}

/// `io::Error` at `path` as a [`WeightsError`].
fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |cause| WeightsError::Io {
        path: path.to_owned(),
        cause,
    }
}
