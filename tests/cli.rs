//! What the binary tells a person, held to what README, config.toml and `--help`
//! say: exit codes, messages on a redirected stderr, the ranges of a setting, the
//! notes beside figures that could mislead.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use clap::Parser;
use vitrine::cli::Cli;
use vitrine::config::Config;
use vitrine::data::deepfashion::{Dataset, GalleryProtocol, LoadOptions};
use vitrine::data::synth::{MAX_SIZE, MIN_SIZE};

fn vitrine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vitrine")
}

fn text(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2_failures_exit_1_and_help_says_which() {
    for args in [&["--no-such-flag"][..], &["synth", "--size", "99999"]] {
        let out = vitrine(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("no-dataset");
    let out = vitrine(&["splits", "--data", text(&missing)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(text(&missing)), "{}", stderr(&out));
    let help = vitrine(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit status: 0 on success")
            && help.contains("1 when a command fails")
            && help.contains("2 for a usage error"),
        "--help does not explain the exit codes:\n{help}"
    );
}

#[test]
fn warnings_on_a_redirected_stderr_carry_no_colour_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A settings file of an earlier version: loading it warns.
    let config = tmp.path().join("old.toml");
    std::fs::write(&config, "[train]\nmargin = 0.3\n").expect("write");
    let log = tmp.path().join("stderr.txt");
    let status = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["--config", text(&config), "runs", "--dir", text(tmp.path())])
        // Colour must depend on the terminal, not on the caller's NO_COLOR.
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create"))
        .status()
        .expect("run vitrine");
    assert!(status.success());
    let written = std::fs::read_to_string(&log).expect("read");
    assert!(
        written.contains("WARN") && written.contains("train.margin moved to [loss]"),
        "{written}"
    );
    assert!(
        !written.contains('\x1b'),
        "escape codes in a file: {written:?}"
    );
}

#[test]
fn a_missing_config_file_names_its_os_error_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("missing.toml");
    let out = vitrine(&["--config", text(&missing), "runs"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(text(&missing)), "{err}");
    // ENOENT's text, "No such file or directory (os error 2)" on Linux.
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn synth_size_has_one_range_in_a_config_file_and_on_the_command_line() {
    let config = |size: u32| Config::from_toml_str(&format!("[synth]\nsize = {size}\n"), "c.toml");
    let flag = |size: u32| Cli::try_parse_from(["vitrine", "synth", "--size", &size.to_string()]);
    for size in [MIN_SIZE, 1025, MAX_SIZE] {
        assert!(config(size).is_ok(), "synth.size = {size}");
        assert!(flag(size).is_ok(), "--size {size}");
    }
    for size in [MIN_SIZE - 1, MAX_SIZE + 1] {
        let err = config(size).expect_err("out of range").to_string();
        assert!(
            err.contains("synth.size")
                && err.contains(&format!("between {MIN_SIZE} and {MAX_SIZE}")),
            "{err}"
        );
        let err = flag(size).expect_err("out of range").to_string();
        assert!(err.contains(&format!("{MIN_SIZE}..={MAX_SIZE}")), "{err}");
    }
    // config.toml documents the same range.
    assert!(
        vitrine::config::DEFAULT_CONFIG_TOML.contains(&format!(
            "({MIN_SIZE}..={MAX_SIZE}, as `vitrine synth --size`)"
        )),
        "config.toml's synth.size comment"
    );
}

/// `vitrine [before…] bench WHAT` on a tiny model and one step, its JSON.
fn tiny_bench(before: &[&str], what: &str) -> serde_json::Value {
    let mut args = before.to_vec();
    args.extend([
        "bench",
        what,
        "--image-size",
        "32",
        "--batch",
        "2",
        "--steps",
        "1",
    ]);
    args.extend(["--device", "cpu", "--json"]);
    let out = vitrine(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn bench_train_reports_images_per_second_beside_triplets() {
    let v = tiny_bench(&[], "train");
    let triplets = v["triplets_per_s"].as_f64().expect("triplets_per_s kept");
    let images = v["images_per_s"].as_f64().expect("images_per_s");
    assert!(triplets > 0.0);
    assert!((images - 3.0 * triplets).abs() <= 1e-9 * images, "{v}");
}

#[test]
fn bench_embed_names_the_precision_and_where_bf16_ran() {
    let v = tiny_bench(&[], "embed");
    assert_eq!(v["precision"], "fp32", "{v}");
    assert!(v["bf16_on"].is_null(), "{v}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bf16 = tmp.path().join("bf16.toml");
    std::fs::write(&bf16, "[model]\nprecision = \"bf16\"\n").expect("write");
    let v = tiny_bench(&["--config", text(&bf16)], "embed");
    assert_eq!(v["precision"], "bf16", "{v}");
    let on = if vitrine_kernels::conv::amx_available() {
        "amx"
    } else {
        "emulated"
    };
    assert_eq!(v["bf16_on"], on, "{v}");
    assert!(v["images_per_s"].as_f64().expect("images_per_s") > 0.0);
}

#[test]
fn a_gallery_smaller_than_20_gets_a_note_and_raw_pixels_no_search_check() {
    let data = common::synth_dataset(12, 32);
    let ds = Dataset::open(&data, LoadOptions::default()).expect("ds");
    let gallery = ds.gallery(GalleryProtocol::Test).len();
    assert!(gallery < 20, "the test needs a small gallery: {gallery}");
    let out = vitrine(&["eval", "--raw-pixels", "--data", text(&data)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let note = report
        .lines()
        .find(|l| l.starts_with("note: "))
        .unwrap_or_else(|| panic!("no note:\n{report}"));
    assert!(
        note.contains(&format!("the gallery holds only {gallery} images"))
            && note.contains("top-20, top-50 count every query")
            && !note.contains("top-1,"),
        "{note}"
    );
    // No index is built or searched for raw pixels: no line about one.
    assert!(
        !report.contains("HNSW") && !report.contains("index"),
        "{report}"
    );
    let out = vitrine(&["eval", "--raw-pixels", "--data", text(&data), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["index_recall_at_k"].is_null(), "{v}");
    assert_eq!(v["top_k"]["20"], v["top_k"]["50"]);
}

#[test]
fn training_notes_a_val_gallery_smaller_than_20() {
    let data = common::synth_dataset(12, 32);
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let out = vitrine(&[
        "train",
        "--data",
        text(&data),
        "--run",
        text(&run),
        "--image-size",
        "32",
        "--max-steps",
        "1",
        "--device",
        "cpu",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("note: validation: the gallery holds only")
            && err.contains("so top-20 counts every query"),
        "{err}"
    );
}

#[test]
fn progress_on_a_pipe_is_plain_lines() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out_dir = tmp.path().join("synth");
    let out = vitrine(&[
        "synth",
        "--out",
        text(&out_dir),
        "--items",
        "40",
        "--size",
        &MIN_SIZE.to_string(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // No bar drawn: no carriage returns, no escape codes, whole lines only.
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("synth: ")).collect();
    let last = "synth: 40/40 (100%) ";
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with(last) && l.contains("/s ETA ")),
        "{err}"
    );
    // About every 10% (and every 10 s): one line per tenth, plus the first.
    assert!((2..=12).contains(&lines.len()), "{err}");
}
