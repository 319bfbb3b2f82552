//! Faults and hostile files against the real binary: a full disk during checkpoint
//! and index writes (through the write hook `VITRINE_FAULT_WRITE`), crafted index
//! files (HNSW dumps with wrong dimensions, huge counts, bad magic; NaN embeddings)
//! that pass the header's hashes, and a held index lock. Every case exits 1 with a
//! message naming the file, and what was there before stays loadable.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use vitrine::index::store::{self, IndexHeader};
use vitrine::model::checkpoint;
use vitrine::run::CheckpointKind;
use vitrine::run::folder::RunDir;
use vitrine::train::resume::read_meta;

fn vitrine(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrine"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vitrine")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exit 1 with every `needles` in the output: no signal, no panic (101).
fn assert_refused(out: &Output, needles: &[&str]) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    for n in needles {
        assert!(t.contains(n), "no {n:?} in: {t}");
    }
}

struct Base {
    data: PathBuf,
    config: PathBuf,
    /// A run trained for two steps and indexed.
    run: PathBuf,
    _tmp: tempfile::TempDir,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let data = common::synth_dataset(40, 32);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = common::tiny_train_config();
        config.train.max_steps = 2;
        config.data.workers = 1;
        let config_path = tmp.path().join("config.toml");
        std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("config");
        let run = tmp.path().join("run");
        let (d, c, r) = (s(&data), s(&config_path), s(&run));
        let out = vitrine(&["train", "--config", c, "--data", d, "--run", r], &[]);
        assert!(out.status.success(), "{}", text(&out));
        let out = vitrine(&["index", "--run", r, "--data", d], &[]);
        assert!(out.status.success(), "{}", text(&out));
        Base {
            data,
            config: config_path,
            run,
            _tmp: tmp,
        }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A copy of the base run (checkpoints, config, index).
fn copy_run(to: &Path) {
    common::copy_dir(&base().run, to);
}

fn query() -> PathBuf {
    let root = &base().data;
    let ds = vitrine::data::deepfashion::Dataset::open(
        root,
        vitrine::data::deepfashion::LoadOptions::default(),
    )
    .expect("ds");
    let q = ds.queries(vitrine::data::deepfashion::Split::Test)[0];
    ds.image_path(q)
}

fn hits(out: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["hits"].clone()
}

fn search(run: &Path) -> Output {
    vitrine(&["search", "--run", s(run), s(&query()), "--json"], &[])
}

#[test]
fn a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint() {
    let b = base();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    copy_run(&run);
    let last = RunDir::new(&run).checkpoint(CheckpointKind::Last);
    let before = read_meta(&last).expect("meta");
    for file in ["last.optim", "last.json", "last.safetensors"] {
        let out = vitrine(
            &[
                "train",
                "--config",
                s(&b.config),
                "--data",
                s(&b.data),
                "--run",
                s(&run),
                "--resume",
                "--max-steps",
                "4",
            ],
            &[("VITRINE_FAULT_WRITE", file)],
        );
        assert_refused(&out, &[file, "No space left on device"]);
        // The previous set is intact and consistent.
        let meta = read_meta(&last).expect("meta");
        assert_eq!(meta, before);
        assert_eq!(
            checkpoint::fingerprint_saved(&last).expect("fingerprint"),
            meta.fingerprint
        );
    }
    // No temporary files were left, and the run resumes once the disk has room.
    let hidden: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    let out = vitrine(
        &[
            "train",
            "--config",
            s(&b.config),
            "--data",
            s(&b.data),
            "--run",
            s(&run),
            "--resume",
            "--max-steps",
            "4",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read_meta(&last).expect("meta").step, 4);
}

#[test]
fn a_full_disk_during_an_index_write_keeps_the_previous_index() {
    let b = base();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    copy_run(&run);
    let before = search(&run);
    assert!(before.status.success(), "{}", text(&before));
    for file in [
        "embeddings.npy",
        "entries.json",
        "graph.hnsw",
        "header.json",
    ] {
        let out = vitrine(
            &["index", "--run", s(&run), "--data", s(&b.data)],
            &[("VITRINE_FAULT_WRITE", file)],
        );
        assert_refused(&out, &[file, "No space left on device"]);
        let after = search(&run);
        assert!(after.status.success(), "{}", text(&after));
        assert_eq!(hits(&after), hits(&before));
        let leftovers: Vec<_> = std::fs::read_dir(&run)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn a_second_index_writer_is_refused_while_the_first_holds_the_lock() {
    let b = base();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    copy_run(&run);
    let lock = store::lock(&RunDir::new(&run).index_dir()).expect("lock");
    let out = vitrine(&["index", "--run", s(&run), "--data", s(&b.data)], &[]);
    assert_refused(
        &out,
        &[&format!("being written by process {}", std::process::id())],
    );
    let gallery = tmp.path().join("more");
    std::fs::create_dir_all(&gallery).expect("mkdir");
    let out = vitrine(&["index", "--run", s(&run), "--add", s(&gallery)], &[]);
    assert_refused(&out, &["being written"]);
    drop(lock);
    let out = vitrine(&["index", "--run", s(&run), "--add", s(&gallery)], &[]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Rewrites one file of the index and its record in the header, as a crafted file
/// (not an accident) would.
fn craft(run: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let dir = RunDir::new(run).index_dir();
    let path = dir.join(name);
    let mut bytes = std::fs::read(&path).expect("read");
    edit(&mut bytes);
    std::fs::write(&path, &bytes).expect("write");
    let header_path = dir.join(store::HEADER_FILE);
    let mut header: IndexHeader =
        serde_json::from_slice(&std::fs::read(&header_path).expect("header")).expect("json");
    let record = header.files.get_mut(name).expect("record");
    record.bytes = bytes.len() as u64;
    record.hash = format!("{:016x}", store::content_hash(&bytes));
    std::fs::write(&header_path, serde_json::to_vec(&header).expect("json")).expect("write");
}

const GRAPH: &str = "graph.hnsw.graph";
const DATA: &str = "graph.hnsw.data";
/// Byte offsets in an hnsw_rs graph dump: magic, mode, m, level scale, layers, ef,
/// then the point count and the dimension.
const POINT_COUNT_AT: usize = 4 + 1 + 1 + 8 + 1 + 8;
const DIM_AT: usize = POINT_COUNT_AT + 8;

type Edit = Box<dyn FnOnce(&mut Vec<u8>)>;

#[test]
fn crafted_index_files_are_refused_with_the_file_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gallery = tmp.path().join("more");
    common::write_jpeg(&gallery.join("a.jpg"), 32, 32, image::Rgb([1, 2, 3]));
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "graph dimension",
            GRAPH,
            Box::new(|b| b[DIM_AT..DIM_AT + 8].copy_from_slice(&1_000_000u64.to_ne_bytes())),
        ),
        (
            "data dimension",
            DATA,
            Box::new(|b| b[4..12].copy_from_slice(&1_000_000u64.to_ne_bytes())),
        ),
        (
            "huge point count",
            GRAPH,
            Box::new(|b| {
                b[POINT_COUNT_AT..POINT_COUNT_AT + 8].copy_from_slice(&(1u64 << 62).to_ne_bytes());
            }),
        ),
        ("bad magic", GRAPH, Box::new(|b| b[0] ^= 0xff)),
        ("truncated", DATA, Box::new(|b| b.truncate(b.len() / 2))),
        (
            "NaN embedding",
            store::EMBEDDINGS_FILE,
            Box::new(|b| {
                let n = b.len();
                b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
        ),
        (
            "huge npy shape",
            store::EMBEDDINGS_FILE,
            Box::new(|b| {
                let end = 10 + usize::from(u16::from_le_bytes([b[8], b[9]]));
                let header = String::from_utf8_lossy(&b[10..end]).into_owned();
                let open = header.find("'shape': (").expect("shape") + 10;
                let close = header[open..].find(',').expect("comma") + open;
                let mut text = header.clone();
                text.replace_range(open..close, "4611686018427387904");
                // Keep the header's length: drop as many of its padding spaces.
                let extra = text.len() - header.len();
                let pad = text.rfind(' ').expect("padding");
                text.replace_range(pad + 1 - extra..=pad, "");
                b.splice(10..end, text.bytes());
            }),
        ),
    ];
    for (what, file, edit) in cases {
        let run = tmp.path().join(what.replace(' ', "-"));
        copy_run(&run);
        craft(&run, file, edit);
        let out = search(&run);
        assert_refused(&out, &[file]);
        eprintln!("{what}: {}", text(&out).trim());
        let out = vitrine(&["index", "--run", s(&run), "--add", s(&gallery)], &[]);
        assert_refused(&out, &[file]);
    }
}
