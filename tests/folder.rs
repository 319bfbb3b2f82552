use vitrine::data::folder::scan_images;

#[test]
fn scans_image_trees_recursively_sorted_skipping_hidden_and_other_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    for p in [
        "b/deep/x.JPG",
        "a.png",
        "b/y.jpeg",
        ".hidden/z.jpg",
        "b/.w.jpg",
        "notes.txt",
        "b/deep/v.gif",
    ] {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"x").expect("write");
    }
    let found: Vec<String> = scan_images(root)
        .expect("scan")
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(found, vec!["a.png", "b/deep/x.JPG", "b/y.jpeg"]);
    assert!(scan_images(&root.join("missing")).is_err());
}
