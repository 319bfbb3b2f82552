//! The real binary on hostile inputs: crafted `.npy` headers, out-of-range flags,
//! terminal escapes in gallery file names, named pipes as images. Each must end in a
//! clean error (exit 1, or clap's 2) naming the file or flag — never a panic (101), a
//! signal, or a hang.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vitrine::config::Config;
use vitrine::index::npy::{self, Matrix};
use vitrine::model::{Embedder, checkpoint};

/// Runs vitrine with `args`, killing it and failing the test after `limit`.
fn vitrine_within(args: &[&std::ffi::OsStr], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vitrine");
    // Drained on threads so a full pipe cannot stall the child.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vitrine {args:?} hung for {limit:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().expect("stdout thread"),
        stderr: err.join().expect("stderr thread"),
    }
}

fn vitrine(args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    vitrine_within(&args, Duration::from_secs(120))
}

fn text(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Exit code 1 and `needle` in stderr.
fn fails_naming(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(needle),
        "stderr does not name {needle}: {stderr}"
    );
}

// -------------------------------------------------------------------------------------
// .npy files for `bench search`

/// A header claiming `rows × cols` followed by `data` bytes.
fn crafted(path: &Path, rows: usize, cols: usize, data: usize) {
    let mut bytes = npy::header(rows, cols);
    bytes.resize(bytes.len() + data, 0);
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn bench_search_refuses_crafted_npy_shapes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let valid = tmp.path().join("valid.npy");
    npy::save(
        &valid,
        &Matrix::new(3, 4, (0..12).map(|i| i as f32).collect()).expect("m"),
    )
    .expect("save");
    let search = |base: &Path, queries: &Path| {
        vitrine(&[
            "bench",
            "search",
            "--base",
            text(base),
            "--queries",
            text(queries),
            "--json",
        ])
    };
    // (N, 0): zero columns, no data (used to panic).
    let (zero_base, zero_queries) = (tmp.path().join("zero-b.npy"), tmp.path().join("zero-q.npy"));
    crafted(&zero_base, 5, 0, 0);
    crafted(&zero_queries, 3, 0, 0);
    let out = search(&zero_base, &zero_queries);
    fails_naming(&out, "zero-b.npy");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no columns"));
    // (2^62, 1): 4·n overflows to 0, which matched the empty data (used to pass).
    let huge = tmp.path().join("huge.npy");
    crafted(&huge, 1 << 62, 1, 0);
    fails_naming(&search(&huge, &valid), "huge.npy");
    fails_naming(&search(&valid, &huge), "huge.npy");
    // (2^40, 4): no overflow, but far more than the file holds; refused before reading.
    let big = tmp.path().join("big.npy");
    crafted(&big, 1 << 40, 4, 16);
    fails_naming(&search(&big, &valid), "big.npy");
    // (0, 4): valid .npy, nothing to benchmark.
    let empty = tmp.path().join("empty.npy");
    crafted(&empty, 0, 4, 0);
    fails_naming(&search(&empty, &valid), "empty.npy");
    fails_naming(&search(&valid, &empty), "empty.npy");
}

// -------------------------------------------------------------------------------------
// Flag ranges

#[test]
fn huge_size_flags_are_usage_errors_not_aborts() {
    for args in [
        &[
            "search",
            "--run",
            "nowhere",
            "q.jpg",
            "--k",
            "18446744073709551615",
        ][..],
        &["search", "--run", "nowhere", "q.jpg", "--k", "0"],
        &[
            "bench",
            "search",
            "--base",
            "b.npy",
            "--queries",
            "q.npy",
            "--ef",
            "20,99999999999",
        ],
        &["bench", "embed", "--batch", "18446744073709551615"],
        &[
            "bench",
            "vectors",
            "--n",
            "10",
            "--dim",
            "1000000000",
            "--out",
            "v.npy",
        ],
        &["synth", "--items", "18446744073709551615", "--out", "never"],
        &["train", "--image-size", "4000000000"],
    ] {
        let out = vitrine(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let flag = args
            .iter()
            .rev()
            .find(|a| a.starts_with("--") && **a != "--out")
            .expect("flag");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    // Each flag in range, their product not: refused before allocating.
    let tmp = tempfile::tempdir().expect("tmp");
    let never = tmp.path().join("never.npy");
    let out = vitrine(&[
        "bench",
        "vectors",
        "--n",
        "100000000",
        "--dim",
        "8192",
        "--out",
        text(&never),
    ]);
    fails_naming(&out, "--dim");
    assert!(!never.exists());
}

#[test]
fn a_config_key_out_of_range_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("huge.toml");
    std::fs::write(&config, "[index]\nef_search = 100000000\n").expect("write");
    let out = vitrine(&["--config", text(&config), "splits", "--data", "nowhere"]);
    fails_naming(&out, "index.ef_search");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("huge.toml") && stderr.contains("line 2"),
        "{stderr}"
    );
}

// -------------------------------------------------------------------------------------
// A run with an untrained checkpoint, indexed over a folder

/// A run folder with a seeded (untrained) 32 px model and its checkpoint file.
fn tiny_run(dir: &Path) -> (PathBuf, PathBuf) {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::write(
        run.join("config.toml"),
        "[model]\nimage_size = 32\ndropout = 0.0\nbnneck = true\n[train]\ndevice = \"cpu\"\n",
    )
    .expect("config");
    let config = Config::load_run(&run.join("config.toml")).expect("run config");
    let (_, varmap) =
        Embedder::seeded(config.model.embedder(), &candle_core::Device::Cpu, 3).expect("model");
    let weights = dir.join("weights.safetensors");
    checkpoint::save(&varmap, &weights).expect("save");
    (run, weights)
}

fn jpeg(path: &Path, colour: [u8; 3]) {
    common::write_jpeg(path, 32, 32, image::Rgb(colour));
}

/// `mkfifo path`; false (with a message) where there is no mkfifo.
fn mkfifo(path: &Path) -> bool {
    match Command::new("mkfifo").arg(path).status() {
        Ok(s) if s.success() => true,
        other => {
            println!("skipping the named-pipe checks: mkfifo failed ({other:?})");
            false
        }
    }
}

fn index(run: &Path, weights: &Path, images: &Path) -> serde_json::Value {
    let out = vitrine(&[
        "index",
        "--run",
        text(run),
        "--images",
        images.to_str().expect("utf-8"),
        "--checkpoint",
        text(weights),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("index json")
}

#[test]
fn search_escapes_control_characters_in_gallery_paths() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, weights) = tiny_run(tmp.path());
    let gallery = tmp.path().join("gallery");
    // Linux allows any byte but '/' and NUL in a file name.
    jpeg(&gallery.join("ok/a.jpg"), [200, 30, 30]);
    jpeg(&gallery.join("ok/b.jpg"), [30, 200, 30]);
    jpeg(
        &gallery.join("evil\u{7}dir/\u{1b}[31m\u{9b}2J.jpg"),
        [30, 30, 200],
    );
    assert_eq!(index(&run, &weights, &gallery)["count"], 3);
    let query = gallery.join("ok/a.jpg");
    let out = vitrine(&["search", "--run", text(&run), text(&query), "--k", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let raw: Vec<char> = stdout
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?} in {stdout:?}"
    );
    assert!(
        stdout.contains("evil\\x07dir/\\x1b[31m\\x9b2J.jpg"),
        "{stdout}"
    );
    // JSON output escapes them its own way and stays parseable.
    let out = vitrine(&[
        "search",
        "--run",
        text(&run),
        text(&query),
        "--k",
        "3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let paths: Vec<&str> = v["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .filter_map(|h| h["path"].as_str())
        .collect();
    assert!(paths.iter().any(|p| p.contains('\u{1b}')), "{paths:?}");
}

#[test]
fn named_pipes_are_unreadable_images_not_hangs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let gallery = tmp.path().join("gallery");
    jpeg(&gallery.join("ok/a.jpg"), [200, 30, 30]);
    jpeg(&gallery.join("ok/b.jpg"), [30, 200, 30]);
    let pipe = gallery.join("ok/pipe.jpg");
    if !mkfifo(&pipe) {
        return;
    }
    let (run, weights) = tiny_run(tmp.path());
    // In a folder being indexed: reported unreadable and skipped.
    let args = [
        "index",
        "--run",
        text(&run),
        "--images",
        text(&gallery),
        "--checkpoint",
        text(&weights),
        "--json",
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = vitrine_within(&args, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (report["count"].as_u64(), report["unreadable"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        stderr.contains("pipe.jpg") && stderr.contains("not a regular file"),
        "{stderr}"
    );
    // As the query: a clean error naming it, quickly.
    let args = ["search", "--run", text(&run), text(&pipe)];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = vitrine_within(&args, Duration::from_secs(60));
    fails_naming(&out, "pipe.jpg");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    // Listed in entries.json (a gallery file replaced by a pipe after indexing): the
    // thumbnails of `--show` skip it instead of blocking.
    let b = gallery.join("ok/b.jpg");
    std::fs::remove_file(&b).expect("rm");
    assert!(mkfifo(&b));
    let query = gallery.join("ok/a.jpg");
    let args = ["search", "--run", text(&run), text(&query), "--show"];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = vitrine_within(&args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("b.jpg"));
}

// -------------------------------------------------------------------------------------
// Run folders: `runs`, `watch` and the dashboard open folders anyone may have copied,
// edited or crafted.

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(std::ffi::OsString::from).collect()
}

fn vitrine_os(args: &[std::ffi::OsString]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsString::as_os_str).collect();
    vitrine_within(&args, Duration::from_secs(60))
}

/// A `started` event with these text fields, as a `metrics.jsonl` line.
fn started_line(backbone: &str, loss: &str, mining: &str) -> String {
    let v = serde_json::json!({
        "event": "started", "run": "r", "device": "cpu", "backbone": backbone,
        "image_size": 32, "batch": 16, "epochs": 1, "steps_per_epoch": 4,
        "total_steps": 4, "start_step": 0, "resumed": false, "loss": loss,
        "mining": mining, "params": 1, "trainable_params": 1, "train_triplets": 1,
        "val_queries": 1, "val_gallery": 1, "time": 0.0,
    });
    format!("{v}\n")
}

/// A run folder under `runs` holding `metrics` as its `metrics.jsonl`.
fn crafted_run(runs: &Path, name: &str, metrics: &str) -> PathBuf {
    let run = runs.join(name);
    std::fs::create_dir_all(run.join("checkpoints")).expect("mkdir");
    std::fs::write(run.join("metrics.jsonl"), metrics).expect("metrics");
    run
}

/// No control character but the line breaks.
fn no_raw_controls(what: &str, text: &str) {
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "{what}: raw {raw:?} in {text:?}");
}

#[test]
fn runs_and_watch_escape_every_text_field_from_a_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let runs = tmp.path().join("runs");
    let title = "\u{1b}]0;pwned\u{7}";
    let failed = serde_json::json!({
        "event": "failed", "step": 0, "epoch": 0, "message": "boom\u{1b}[2J\u{9b}31m",
    });
    let evil = crafted_run(
        &runs,
        "evil",
        &(started_line(title, "triplet", "\u{9b}31mbatch_hard") + &format!("{failed}\n")),
    );
    crafted_run(
        &runs,
        "loss",
        &started_line("resnet18", "\u{1b}c\u{7f}", ""),
    );
    let out = vitrine(&["runs", "--dir", text(&runs)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    no_raw_controls("runs", &stdout);
    no_raw_controls("runs (stderr)", &String::from_utf8_lossy(&out.stderr));
    for shown in ["\\x1b]0;pwned\\x07", "\\x9b31mbatch_hard", "\\x1bc\\x7f"] {
        assert!(stdout.contains(shown), "{shown} in {stdout}");
    }
    // JSON escapes them its own way (C1 and DEL too) and keeps them in the values.
    let out = vitrine(&["runs", "--json", "--dir", text(&runs)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    no_raw_controls("runs --json", &stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v[0]["backbone"], title);
    assert_eq!(v[0]["status"], "failed");
    assert!(
        v[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains('\u{9b}'))
    );
    // `watch` off a terminal: the events as JSON lines, as safe.
    let out = vitrine(&["watch", text(&evil)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    no_raw_controls("watch", &stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
}

#[test]
fn named_pipes_and_devices_in_run_folders_are_unreadable_runs_not_hangs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let runs = tmp.path().join("runs");
    let good = started_line("resnet18", "norm_softmax", "");
    crafted_run(&runs, "fine", &good);
    let piped = |name: &str, file: &str| {
        let run = crafted_run(&runs, name, &good);
        let path = run.join(file);
        let _ = std::fs::remove_file(&path);
        mkfifo(&path).then_some(run)
    };
    let (Some(metrics), Some(_lock), Some(_control)) = (
        piped("pipe-metrics", "metrics.jsonl"),
        piped("pipe-lock", "lock"),
        piped("pipe-control", "control"),
    ) else {
        return;
    };
    // An endless device behind a link: refused before a byte is read.
    let zero = crafted_run(&runs, "zero", "");
    std::fs::remove_file(zero.join("metrics.jsonl")).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", zero.join("metrics.jsonl")).expect("link");
    for json in [false, true] {
        let mut args = vec!["runs", "--dir", text(&runs)];
        if json {
            args.push("--json");
        }
        let out = vitrine(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        if json {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            let rows = v.as_array().expect("rows");
            let status = |name: &str| {
                rows.iter()
                    .find(|r| r["name"] == name)
                    .unwrap_or_else(|| panic!("{name} listed: {v}"))
                    .clone()
            };
            assert_eq!(status("fine")["status"], "interrupted");
            for name in ["pipe-metrics", "pipe-lock", "pipe-control", "zero"] {
                let row = status(name);
                assert_eq!(row["status"], "unreadable", "{row}");
                assert!(
                    row["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("not a regular file")),
                    "{row}"
                );
            }
        } else {
            assert!(stderr.contains("pipe-metrics is unreadable"), "{stderr}");
            assert!(String::from_utf8_lossy(&out.stdout).contains("unreadable"));
        }
    }
    let out = vitrine(&["watch", text(&metrics)]);
    fails_naming(&out, "metrics.jsonl");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn a_huge_metrics_log_is_read_in_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let runs = tmp.path().join("runs");
    let run = crafted_run(&runs, "huge", &started_line("resnet18", "norm_softmax", ""));
    // 640 MiB of one endless line (sparse: no disk used) after a valid first event.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("metrics.jsonl"))
        .expect("open");
    f.set_len(640 << 20).expect("sparse");
    drop(f);
    // Under a 512 MiB address-space limit: reading the file whole cannot succeed.
    let script = format!(
        "ulimit -v 524288 && exec '{}' runs --json --dir '{}'",
        env!("CARGO_BIN_EXE_vitrine"),
        text(&runs)
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("`runs` over a 640 MiB log hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["backbone"], "resnet18", "{v}");
}

#[test]
fn a_run_folder_named_in_invalid_utf8_is_listed_lossily_with_the_others() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let runs = tmp.path().join("runs");
    let line = started_line("resnet18", "norm_softmax", "");
    crafted_run(&runs, "a", &line);
    let bad = runs.join(std::ffi::OsStr::from_bytes(b"b\xff\xfe"));
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(bad.join("metrics.jsonl"), &line).expect("metrics");
    let out = vitrine_os(&[os(&["runs", "--json", "--dir"]), vec![runs.clone().into()]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = v.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["name"], "a");
    assert_eq!(rows[1]["path_not_utf8"], true, "{v}");
    assert!(
        rows[1]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("b\u{fffd}\u{fffd}"))
    );
    let out = vitrine_os(&[os(&["runs", "--dir"]), vec![runs.into()]].concat());
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

// -------------------------------------------------------------------------------------
// A run trained on a GPU, used on a CPU build

#[test]
fn a_gpu_trained_run_indexes_and_searches_on_a_cpu_build() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, weights) = tiny_run(tmp.path());
    let config = run.join("config.toml");
    let text_of = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text_of.replace("device = \"cpu\"", "device = \"cuda:0\""),
    )
    .expect("config");
    let gallery = tmp.path().join("gallery");
    jpeg(&gallery.join("a.jpg"), [200, 30, 30]);
    jpeg(&gallery.join("b.jpg"), [30, 200, 30]);
    let index_args = |device: Option<&str>| {
        let mut a = vec![
            "index",
            "--run",
            text(&run),
            "--images",
            text(&gallery),
            "--checkpoint",
            text(&weights),
            "--json",
        ];
        if let Some(d) = device {
            a.extend(["--device", d]);
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let call = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        vitrine(&args)
    };
    if cfg!(feature = "cuda") {
        println!("a cuda build: the fall back is for CPU builds");
        return;
    }
    // The run's cuda:0 cannot be had here: its model runs on the CPU, said once.
    let out = call(index_args(None));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("running its model on the CPU").count(),
        1,
        "{stderr}"
    );
    let query = gallery.join("a.jpg");
    let out = vitrine(&["search", "--run", text(&run), text(&query), "--k", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --device asks strictly: a GPU this build cannot use is an error naming the flag.
    let out = call(index_args(Some("cuda:0")));
    fails_naming(&out, "--device");
    let out = call(index_args(Some("cpu")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("on the CPU"),
        "{stderr}"
    );
    let out = vitrine(&[
        "search",
        "--run",
        text(&run),
        text(&query),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every command that runs a run's model has the flag (parsed before any terminal
    // is touched: a bad value is a usage error).
    for cmd in ["dashboard", "watch", "eval"] {
        let mut args = vec![cmd, "--device", "gpu"];
        if cmd == "watch" {
            args.push(text(&run));
        }
        let out = vitrine(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(
            stderr.contains("--device") && stderr.contains("cuda:N"),
            "{cmd}: {stderr}"
        );
    }
}
