use vitrine::config::{Config, ConfigError};

#[test]
fn a_partial_file_overrides_only_its_keys() {
    let c = Config::from_toml_str("[synth]\nitems = 50\n", "user.toml").expect("parse");
    assert_eq!(c.synth.items, 50);
    assert_eq!(c.synth.size, Config::default().synth.size);
    assert_eq!(c.data, Config::default().data);
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let err = Config::from_toml_str("[data]\nroot = \"x\"\nroots = \"y\"\n", "user.toml")
        .expect_err("unknown key");
    let msg = err.to_string();
    assert!(
        msg.contains("user.toml") && msg.contains("line 3") && msg.contains("roots"),
        "{msg}"
    );
    let err =
        Config::from_toml_str("[dta]\nroot = \"x\"\n", "user.toml").expect_err("unknown section");
    assert!(err.to_string().contains("dta"), "{err}");
}

#[test]
fn invalid_values_name_the_key_and_line() {
    let err =
        Config::from_toml_str("[synth]\n# many\nitems = 3\n", "user.toml").expect_err("range");
    match &err {
        ConfigError::Invalid { key, line, .. } => {
            assert_eq!(key, "synth.items");
            assert_eq!(*line, Some(3));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("user.toml, line 3"), "{err}");
    let err = Config::from_toml_str("[data]\ngallery = \"val\"\n", "user.toml").expect_err("enum");
    let msg = err.to_string();
    assert!(msg.contains("line 2") && msg.contains("val+test"), "{msg}");
    let err = Config::from_toml_str("[synth]\nsize = \"big\"\n", "user.toml").expect_err("type");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err =
        Config::load(Some(std::path::Path::new("/nonexistent/vitrine.toml"))).expect_err("missing");
    assert!(
        err.to_string().contains("/nonexistent/vitrine.toml"),
        "{err}"
    );
}

#[test]
fn sizes_have_upper_bounds_that_name_the_key() {
    for (text, key, line) in [
        ("[index]\nef_search = 100000000\n", "index.ef_search", 2),
        (
            "[index]\n\nshortlist = 9223372036854775807\n",
            "index.shortlist",
            3,
        ),
        ("[data]\nprefetch = 1000000\n", "data.prefetch", 2),
        ("[data]\nworkers = 100000\n", "data.workers", 2),
        (
            "[model]\nembedding_dim = 1000000000\n",
            "model.embedding_dim",
            2,
        ),
        ("[model]\nimage_size = 100000\n", "model.image_size", 2),
        ("[train]\nbatch = 10000000\n", "train.batch", 2),
        ("[train]\nthreads = 1000000\n", "train.threads", 2),
        ("[train]\nepochs = 9223372036854775807\n", "train.epochs", 2),
        ("[synth]\nitems = 9223372036854775807\n", "synth.items", 2),
    ] {
        let err = Config::from_toml_str(text, "user.toml").expect_err(key);
        match &err {
            ConfigError::Invalid {
                key: k, line: l, ..
            } => {
                assert_eq!((k.as_str(), *l), (key, Some(line)), "{err}");
            }
            other => panic!("{key}: unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(key) && msg.contains("must be between"),
            "{msg}"
        );
    }
    // The bounds themselves are accepted.
    let c = Config::from_toml_str(
        "[index]\nef_search = 100000\nshortlist = 100000\n",
        "user.toml",
    )
    .expect("at the bounds");
    assert_eq!(c.index.ef_search, 100_000);
}

#[test]
fn target_recall_is_above_0_and_at_most_1_and_named_when_not() {
    assert_eq!(Config::default().index.target_recall, 0.99);
    for bad in ["0.0", "-0.5", "1.01", "nan"] {
        let text = format!("[index]\ntarget_recall = {bad}\n");
        let err = Config::from_toml_str(&text, "user.toml").expect_err(bad);
        match &err {
            ConfigError::Invalid { key, line, .. } => {
                assert_eq!(
                    (key.as_str(), *line),
                    ("index.target_recall", Some(2)),
                    "{err}"
                );
            }
            other => panic!("{bad}: unexpected {other:?}"),
        }
        assert!(err.to_string().contains("at most 1"), "{err}");
    }
    for good in ["1.0", "0.5", "0.999"] {
        let text = format!("[index]\ntarget_recall = {good}\n");
        let c = Config::from_toml_str(&text, "user.toml").expect(good);
        assert_eq!(
            c.index.target_recall.to_string(),
            good.trim_end_matches(".0")
        );
    }
}

#[test]
fn the_index_builder_is_vitrine_or_hnsw_rs() {
    use vitrine::config::IndexBuilder;
    let c = Config::from_toml_str("[index]\nbuilder = \"hnsw_rs\"\n", "user.toml").expect("parse");
    assert_eq!(c.index.builder, IndexBuilder::HnswRs);
    assert_eq!(Config::default().index.builder, IndexBuilder::Vitrine);
    let err = Config::from_toml_str("[index]\nbuilder = \"hnswlib\"\n", "user.toml")
        .expect_err("unknown builder")
        .to_string();
    assert!(err.contains("user.toml") && err.contains("line 2"), "{err}");
    assert!(
        err.contains("`vitrine`") && err.contains("`hnsw_rs`"),
        "{err}"
    );
}
