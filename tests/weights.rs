//! `vitrine weights pull` and `--pretrained hf:…` against a Hub served on
//! 127.0.0.1 by the test (never the internet): the file API hf-hub and
//! huggingface_hub use, from a tiny ResNet18 at torchvision names written here.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};
use vitrine::model::{Backbone, Embedder, EmbedderConfig, Precision};

const BIN: &str = env!("CARGO_BIN_EXE_vitrine");
const COMMIT: &str = "8f7c3b2a1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a";
const TOKEN: &str = "hf_test_secret";

/// A ResNet18 backbone under torchvision/timm names, with the ImageNet classifier
/// such files carry, in f16 (half the bytes; the loader converts).
fn resnet18_safetensors() -> (Vec<u8>, HashMap<String, Tensor>) {
    let cfg = EmbedderConfig {
        backbone: Backbone::Resnet18,
        embedding_dim: 8,
        dropout: 0.0,
        train_from_stage: 0,
        bnneck: false,
        flip_average: false,
        invert_average: false,
        gem_p: 1.0,
        precision: Precision::Fp32,
    };
    let (_, varmap) = Embedder::seeded(cfg, &Device::Cpu, 5).expect("model");
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("lock")
        .iter()
        .filter(|(name, _)| !name.starts_with("head.") && !name.starts_with("neck."))
        .map(|(name, var)| {
            (
                name.clone(),
                var.as_tensor().to_dtype(DType::F16).expect("f16"),
            )
        })
        .collect();
    tensors.insert(
        "fc.weight".into(),
        Tensor::zeros((1000, 512), DType::F16, &Device::Cpu).expect("fc"),
    );
    let bytes = safetensors::tensor::serialize(tensors.clone(), None).expect("serialize");
    (bytes, tensors)
}

fn sha256(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// What the test Hub holds for one repo.
#[derive(Clone)]
struct Served {
    files: Vec<(&'static str, Vec<u8>)>,
    /// The LFS sha256 the API lists for `model.safetensors` (the real one unless a
    /// test corrupts the body).
    listed_sha: Option<String>,
    /// Answers 403 GatedRepo unless this bearer token comes.
    token: Option<&'static str>,
}

/// A Hugging Face Hub on 127.0.0.1: `GET /api/models/{repo}/revision/{rev}` and
/// `GET /{repo}/resolve/{rev}/{file}` (with ranges), one request per connection.
struct Hub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    fn start(repos: HashMap<&'static str, Served>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let _ = serve(stream, &repos, &log2);
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
            log,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the port: from now on the Hub is unreachable.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }

    fn requests(&self, containing: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(containing))
            .count()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    stream: TcpStream,
    repos: &HashMap<&'static str, Served>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    log.lock().expect("log").push(target.clone());
    let (path, _query) = target.split_once('?').unwrap_or((&target, ""));
    let mut out = stream;
    let reply = |out: &mut TcpStream, status: &str, extra: &[(&str, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()
    };
    let not_found = |out: &mut TcpStream, code: &str| {
        reply(
            out,
            "404 Not Found",
            &[("X-Error-Code", code.to_owned())],
            b"{\"error\":\"not found\"}",
        )
    };
    // /api/models/OWNER/NAME/revision/REV or /OWNER/NAME/resolve/REV/FILE
    let (repo, rev, file) = if let Some(rest) = path.strip_prefix("/api/models/") {
        match rest.split_once("/revision/") {
            Some((repo, rev)) => (repo.to_owned(), rev.to_owned(), None),
            None => return not_found(&mut out, "RepoNotFound"),
        }
    } else {
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if parts.len() != 5 || parts[2] != "resolve" {
            return not_found(&mut out, "RepoNotFound");
        }
        (
            format!("{}/{}", parts[0], parts[1]),
            parts[3].to_owned(),
            Some(parts[4].to_owned()),
        )
    };
    let Some(served) = repos.get(repo.as_str()) else {
        return not_found(&mut out, "RepoNotFound");
    };
    if rev != "main" && rev != COMMIT {
        return not_found(&mut out, "RevisionNotFound");
    }
    if let Some(token) = served.token
        && headers.get("authorization") != Some(&format!("Bearer {token}"))
    {
        return reply(
            &mut out,
            "403 Forbidden",
            &[("X-Error-Code", "GatedRepo".to_owned())],
            b"{\"error\":\"gated\"}",
        );
    }
    let Some(file) = file else {
        let siblings: Vec<serde_json::Value> = served
            .files
            .iter()
            .map(|(name, bytes)| {
                let mut s = serde_json::json!({"rfilename": name, "size": bytes.len()});
                // Weights are LFS files: the API lists their sha256.
                let ext = Path::new(name).extension().and_then(|e| e.to_str());
                if matches!(ext, Some("safetensors" | "bin")) {
                    s["lfs"] = serde_json::json!({
                        "sha256": served.listed_sha.clone().unwrap_or_else(|| sha256(bytes)),
                        "size": bytes.len(),
                        "pointerSize": 134,
                    });
                }
                s
            })
            .collect();
        let body = serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings});
        return reply(
            &mut out,
            "200 OK",
            &[("Content-Type", "application/json".to_owned())],
            body.to_string().as_bytes(),
        );
    };
    let Some((_, bytes)) = served.files.iter().find(|(n, _)| *n == file) else {
        return not_found(&mut out, "EntryNotFound");
    };
    let total = bytes.len();
    let linked = served.listed_sha.clone().unwrap_or_else(|| sha256(bytes));
    let mut extra = vec![
        (
            "ETag",
            "\"0123456789abcdef0123456789abcdef01234567\"".to_owned(),
        ),
        ("X-Linked-Etag", format!("\"{linked}\"")),
        ("X-Repo-Commit", COMMIT.to_owned()),
        ("X-Linked-Size", total.to_string()),
        ("Accept-Ranges", "bytes".to_owned()),
    ];
    match headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
        Some(range) => {
            let (a, b) = range.split_once('-').unwrap_or((range, ""));
            let start: usize = a.parse().unwrap_or(0).min(total);
            let end: usize = b.parse().map_or(total.saturating_sub(1), |e: usize| {
                e.min(total.saturating_sub(1))
            });
            extra.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
            reply(&mut out, "206 Partial Content", &extra, &bytes[start..=end])
        }
        None => reply(&mut out, "200 OK", &extra, bytes),
    }
}

/// The test Hub's repos: a good one, one whose body does not match its listed
/// sha256, a gated one and one without safetensors.
fn test_repos(weights: &[u8]) -> HashMap<&'static str, Served> {
    let good = Served {
        files: vec![
            (".gitattributes", b"*.safetensors filter=lfs".to_vec()),
            ("config.json", b"{\"architecture\": \"resnet18\"}".to_vec()),
            ("model.safetensors", weights.to_vec()),
        ],
        listed_sha: None,
        token: None,
    };
    let mut corrupted = weights.to_vec();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0xff;
    HashMap::from([
        ("test/tiny-resnet18", good.clone()),
        (
            "test/corrupt",
            Served {
                files: vec![("model.safetensors", corrupted)],
                listed_sha: Some(sha256(weights)),
                token: None,
            },
        ),
        (
            "test/gated",
            Served {
                token: Some(TOKEN),
                ..good
            },
        ),
        (
            "test/bin-only",
            Served {
                files: vec![
                    ("config.json", b"{}".to_vec()),
                    ("pytorch_model.bin", vec![1, 2, 3]),
                ],
                listed_sha: None,
                token: None,
            },
        ),
    ])
}

/// Runs vitrine with the Hub at `endpoint` and its cache in `hf_home`.
fn vitrine(hf_home: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("VITRINE_FAULT_WRITE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vitrine")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Nothing of `repo` in the cache but what a successful pull wrote: no staging
/// folder, and (when `absent`) no repo folder with content.
fn assert_no_trace(hub: &Path, repo: &str) {
    let folder = format!("models--{}", repo.replace('/', "--"));
    let staging = hub.join(".locks/vitrine").join(&folder);
    assert!(!staging.exists(), "staging left: {}", staging.display());
    let dir = hub.join(&folder);
    for sub in ["blobs", "snapshots", "refs"] {
        let entries = std::fs::read_dir(dir.join(sub)).map_or(0, Iterator::count);
        assert_eq!(entries, 0, "{repo}: {sub}/ is not empty");
    }
}

#[test]
fn pulled_weights_are_verified_cached_and_train_offline() {
    let (weights, tensors) = resnet18_safetensors();
    let sha = sha256(&weights);
    let mut hub = Hub::start(test_repos(&weights));
    let tmp = tempfile::tempdir().expect("tempdir");
    let hf_home = tmp.path().join("hf");
    let cache = hf_home.join("hub");
    let endpoint = hub.endpoint();

    let out = vitrine(
        &hf_home,
        &endpoint,
        &["weights", "pull", "test/tiny-resnet18"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = PathBuf::from(text(&out.stdout).trim());
    let repo_dir = cache.join("models--test--tiny-resnet18");
    assert_eq!(
        path,
        repo_dir
            .join("snapshots")
            .join(COMMIT)
            .join("model.safetensors")
    );
    // huggingface_hub's layout: blob named by its sha256, relative link, ref.
    assert_eq!(
        std::fs::read_link(&path).expect("a link"),
        Path::new("../../blobs").join(&sha)
    );
    assert_eq!(std::fs::read(&path).expect("read"), weights);
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).expect("ref"),
        COMMIT
    );
    assert!(
        text(&out.stderr).contains("downloaded and verified"),
        "{}",
        text(&out.stderr)
    );
    assert_no_trace(&cache, "test/none");
    let downloads = hub.requests("/resolve/");
    assert!(downloads >= 1);

    // Pulled again: the cached blob is hashed and reused, nothing downloaded.
    let out = vitrine(
        &hf_home,
        &endpoint,
        &["weights", "pull", "test/tiny-resnet18"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already in the cache"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(hub.requests("/resolve/"), downloads);

    // The Hub goes away: pull falls back to the cache, training never asks it.
    hub.stop();
    let out = vitrine(
        &hf_home,
        &endpoint,
        &["weights", "pull", "test/tiny-resnet18", "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["path"], path.display().to_string());
    assert_eq!(report["downloaded"], false);
    assert!(
        report["offline"]
            .as_str()
            .is_some_and(|s| s.contains("cannot reach")),
        "{report}"
    );

    let data = common::synth_dataset(24, 64);
    let config = tmp.path().join("frozen.toml");
    std::fs::write(
        &config,
        "[model]\nimage_size = 32\ndropout = 0.0\ntrain_from_stage = 5\n\n\
         [train]\ndevice = \"cpu\"\npk_items = 8\npk_images = 2\nepochs = 1\ncheckpoint_every = 0\n",
    )
    .expect("config");
    let run = tmp.path().join("run");
    let out = vitrine(
        &hf_home,
        &endpoint,
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "train",
            "--data",
            data.to_str().expect("utf-8"),
            "--run",
            run.to_str().expect("utf-8"),
            "--max-steps",
            "2",
            "--pretrained",
            "hf:test/tiny-resnet18",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("weights: 100 backbone tensors from hf:test/tiny-resnet18"),
        "{stderr}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let started: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("event"))
        .find(|e| e["event"] == "started")
        .expect("a started event");
    assert_eq!(started["pretrained"]["source"], "hf:test/tiny-resnet18");
    assert_eq!(started["pretrained"]["file"], path.display().to_string());
    assert_eq!(started["pretrained"]["tensors"], 100);
    // Stages 1–4 were frozen: the checkpoint holds the pulled values exactly.
    let saved =
        candle_core::safetensors::load(run.join("checkpoints/last.safetensors"), &Device::Cpu)
            .expect("checkpoint");
    for name in ["conv1.weight", "layer3.1.bn2.running_mean"] {
        let want: Vec<f32> = tensors[name]
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("file values");
        let got: Vec<f32> = saved[name]
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("saved");
        assert_eq!(got, want, "{name}");
    }

    // Offline with nothing cached: one line naming the command that fetches it;
    // the run fails before anything is written (no run folder: the settings are
    // checked before it is made).
    let other_run = tmp.path().join("other-run");
    let out = vitrine(
        &hf_home,
        &endpoint,
        &[
            "train",
            "--data",
            data.to_str().expect("utf-8"),
            "--run",
            other_run.to_str().expect("utf-8"),
            "--pretrained",
            "hf:test/resnet50@v2",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`vitrine weights pull test/resnet50@v2`")
            && stderr.contains("not in the Hugging Face cache"),
        "{stderr}"
    );
    assert!(
        !other_run.exists(),
        "a run that cannot start leaves no folder"
    );
    let out = vitrine(
        &hf_home,
        &endpoint,
        &["weights", "pull", "test/resnet50"],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Hugging Face Hub"),
        "{stderr}"
    );

    let out = vitrine(&hf_home, &endpoint, &["weights", "list", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["sha256"], sha);
}

#[test]
fn pull_errors_name_their_cause_and_leave_nothing_in_the_cache() {
    let (weights, _) = resnet18_safetensors();
    let hub = Hub::start(test_repos(&weights));
    let tmp = tempfile::tempdir().expect("tempdir");
    let hf_home = tmp.path().join("hf");
    let cache = hf_home.join("hub");
    let endpoint = hub.endpoint();
    let fails = |args: &[&str], env: &[(&str, &str)], wants: &[&str]| {
        let out = vitrine(&hf_home, &endpoint, args, env);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.trim().lines().last().unwrap_or_default().to_owned();
        assert!(last.starts_with("error: "), "{args:?}: {stderr}");
        for want in wants {
            assert!(last.contains(want), "{args:?}: `{want}` not in {last}");
        }
    };

    fails(
        &["weights", "pull", "test/missing"],
        &[],
        &["test/missing", "no such model repository", "404"],
    );
    assert_no_trace(&cache, "test/missing");
    fails(
        &["weights", "pull", "test/tiny-resnet18@v9"],
        &[],
        &["no revision `v9`"],
    );
    fails(
        &["weights", "pull", "test/bin-only"],
        &[],
        &["no safetensors weights", "pytorch_model.bin"],
    );
    fails(
        &["weights", "pull", "test/gated"],
        &[],
        &["gated", "HF_TOKEN"],
    );
    assert_no_trace(&cache, "test/gated");

    // The body does not hash to the listed sha256: refused, nothing kept.
    let before = hub.requests("/test/corrupt/resolve/");
    fails(
        &["weights", "pull", "test/corrupt"],
        &[],
        &["sha256", &sha256(&weights), "nothing was kept"],
    );
    assert!(
        hub.requests("/test/corrupt/resolve/") > before,
        "it was downloaded"
    );
    assert_no_trace(&cache, "test/corrupt");

    // A full disk while the pull writes into the cache: a clear error, no staging
    // left; the verified blob it had placed is reused by the next pull.
    fails(
        &["weights", "pull", "test/tiny-resnet18"],
        &[("VITRINE_FAULT_WRITE", "main")],
        &["No space left on device"],
    );
    assert!(
        !cache
            .join(".locks/vitrine/models--test--tiny-resnet18")
            .exists()
    );
    assert!(!cache.join("models--test--tiny-resnet18/refs/main").exists());
    let downloads = hub.requests("/test/tiny-resnet18/resolve/");
    let out = vitrine(
        &hf_home,
        &endpoint,
        &["weights", "pull", "test/tiny-resnet18"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(hub.requests("/test/tiny-resnet18/resolve/"), downloads);

    // With the token the gated repo serves.
    let out = vitrine(
        &hf_home,
        &endpoint,
        &["weights", "pull", "test/gated"],
        &[("HF_TOKEN", TOKEN)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // HF_HUB_OFFLINE: the cache only, the Hub is not asked.
    let asked = hub.requests("/api/");
    fails(
        &["weights", "pull", "test/missing"],
        &[("HF_HUB_OFFLINE", "1")],
        &["HF_HUB_OFFLINE", "`vitrine weights pull test/missing`"],
    );
    assert_eq!(hub.requests("/api/"), asked);

    // Not a repo name: refused before anything is asked.
    let out = vitrine(&hf_home, &endpoint, &["weights", "pull", "timm/../x"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("OWNER/NAME"));
}
