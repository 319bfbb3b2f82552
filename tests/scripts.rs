//! The helper scripts' own interface: what `--help` prints.

use std::process::Command;

#[test]
fn build_cuda_help_is_the_header_comment_and_no_code() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-cuda");
    let out = Command::new("bash")
        .args([script, "--help"])
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).expect("utf-8");
    assert!(help.contains("scripts/build-cuda --tests"), "{help}");
    assert!(help.contains("CUDA_COMPUTE_CAP"), "{help}");
    // Every line printed is a line of the header comment, none is a line of code.
    let source = std::fs::read_to_string(script).expect("script");
    let comments: Vec<&str> = source
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    for line in help.lines() {
        assert!(
            comments.contains(&line.trim()),
            "`{line}` is not in the header comment:\n{help}"
        );
    }
    assert_eq!(help.lines().count(), comments.len(), "{help}");
}
