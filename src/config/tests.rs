//! Unit tests of the settings parser, kept apart so that config.rs holds the types and rules.

use super::*;

/// Dotted names of every leaf key.
fn keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let name = format!("{prefix}{k}");
        match v {
            toml::Value::Table(inner) => keys(inner, &format!("{name}."), out),
            _ => out.push(name),
        }
    }
}

#[test]
fn shipped_file_equals_builtin_defaults() {
    let parsed = Config::from_toml_str(DEFAULT_CONFIG_TOML, "config.toml").expect("parse");
    assert_eq!(parsed, Config::default());
    // And the file documents every key (serde defaults would hide a missing one).
    let file: toml::Table = toml::from_str(DEFAULT_CONFIG_TOML).expect("table");
    let all = toml::Table::try_from(Config::default()).expect("serialize");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    keys(&file, "", &mut a);
    keys(&all, "", &mut b);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn durations_parse_or_name_the_problem() {
    use std::time::Duration;
    assert_eq!(parse_duration(""), Ok(None));
    assert_eq!(parse_duration("0"), Ok(None));
    assert_eq!(parse_duration("10m"), Ok(Some(Duration::from_secs(600))));
    assert_eq!(parse_duration("1h30m"), Ok(Some(Duration::from_secs(5400))));
    assert_eq!(parse_duration("90s"), Ok(Some(Duration::from_secs(90))));
    assert_eq!(parse_duration("600"), Ok(Some(Duration::from_secs(600))));
    assert_eq!(parse_duration("1.5m"), Ok(Some(Duration::from_secs(90))));
    for bad in ["10x", "m", "10m5", "-3", "1h-2m"] {
        let e = parse_duration(bad).expect_err(bad);
        assert!(e.contains(bad), "{e}");
    }
}

#[test]
fn old_triplet_keys_move_to_the_loss_section() {
    let c = Config::from_toml_str(
        "[train]\nmargin = 0.3\nmining = \"semi_hard\"\n",
        "old.toml",
    )
    .expect("old config");
    assert_eq!(c.loss.kind, LossKind::Triplet);
    assert_eq!(c.loss.margin, 0.3);
    assert_eq!(c.loss.mining, crate::model::Mining::SemiHard);
    assert_eq!(c.sampler(), SamplerKind::Pk);
    // The original's recipe is one setting away.
    let c = Config::from_toml_str("[loss]\nkind = \"triplet\"\n", "x").expect("triplet");
    assert_eq!(c.sampler(), SamplerKind::Triplets);
    let e = Config::from_toml_str(
        "[loss]\nkind = \"triplet\"\n[train]\nsampler = \"pk\"\n",
        "x.toml",
    )
    .expect_err("offline on pk");
    assert!(e.to_string().contains("train.sampler"), "{e}");
}

#[test]
fn key_line_finds_keys_in_sections() {
    let text = "[data]\nroot = \"x\"\n\n[synth]\n# c\nitems = 3\n";
    assert_eq!(key_line(text, "synth.items"), Some(6));
    assert_eq!(key_line(text, "data.root"), Some(2));
    assert_eq!(key_line(text, "data.items"), None);
}

#[test]
fn a_run_folder_without_newer_model_keys_keeps_its_old_model() {
    let dir = std::env::temp_dir().join(format!("vitrine-config-old-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("config.toml");
    // Written before BNNeck and GeM pooling existed.
    std::fs::write(&path, "[model]\nimage_size = 48\n").expect("write");
    let old = Config::load_run(&path).expect("old run");
    assert!(!old.model.bnneck);
    assert_eq!(old.model.gem_p, 1.0);
    std::fs::write(&path, "[model]\nbnneck = true\ngem_p = 3.0\n").expect("write");
    let new = Config::load_run(&path).expect("new run");
    assert!(new.model.bnneck);
    assert_eq!(new.model.embedder().gem_p, 3.0);
    std::fs::remove_dir_all(&dir).expect("clean up");
    for bad in ["0.5", "17.0", "nan"] {
        let text = format!("[model]\ngem_p = {bad}\n");
        let e = Config::from_toml_str(&text, "x.toml").expect_err(bad);
        assert!(
            e.to_string().contains("model.gem_p") && e.to_string().contains("line 2"),
            "{e}"
        );
    }
}
