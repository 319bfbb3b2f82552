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
