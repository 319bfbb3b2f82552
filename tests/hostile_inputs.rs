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
