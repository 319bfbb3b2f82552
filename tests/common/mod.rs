//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

/// Copies a text-only fixture dataset into a temp dir and writes a small solid
/// JPEG for every image it lists (colour derived from the path).
pub fn materialize_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ds");
    copy_dir(Path::new(FIXTURE), &root);
    let text = std::fs::read_to_string(root.join("Eval/list_eval_partition.txt")).expect("read");
    for line in text.lines().skip(2) {
        for p in line.split_whitespace().take(2) {
            let h = vitrine::fsutil::fnv1a64(p.as_bytes());
            let colour = image::Rgb([
                (h & 0xff) as u8,
                (h >> 8 & 0xff) as u8,
                (h >> 16 & 0xff) as u8,
            ]);
            write_jpeg(&root.join(p), 32, 32, colour);
        }
    }
    (dir, root)
}

pub fn write_jpeg(path: &Path, w: u32, h: u32, colour: image::Rgb<u8>) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let img = image::RgbImage::from_pixel(w, h, colour);
    img.save(path).expect("save");
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// A synthetic dataset made once per test binary (kept until the process exits).
pub fn synth_dataset(items: usize, size: u32) -> PathBuf {
    use std::sync::{Mutex, OnceLock};
    type Made = Vec<((usize, u32), PathBuf, tempfile::TempDir)>;
    static MADE: OnceLock<Mutex<Made>> = OnceLock::new();
    let made = MADE.get_or_init(|| Mutex::new(Vec::new()));
    let mut made = made.lock().expect("lock");
    if let Some((_, p, _)) = made.iter().find(|(k, _, _)| *k == (items, size)) {
        return p.clone();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("synth");
    let opts = vitrine::data::synth::SynthOptions {
        items,
        size,
        seed: 11,
    };
    vitrine::data::synth::generate(&opts, &root, &|_, _| {}).expect("synth");
    made.push(((items, size), root.clone(), dir));
    root
}

/// Config for fast CPU training tests: tiny images, no dropout (reproducible).
pub fn tiny_train_config() -> vitrine::config::Config {
    let mut c = vitrine::config::Config::default();
    c.model.image_size = 32;
    c.model.dropout = 0.0;
    c.train.batch = 16;
    // Small P×K batches: several steps per epoch on the tests' small sets.
    c.train.pk_items = 8;
    c.train.pk_images = 2;
    c.train.epochs = 1;
    c.train.lr = 1e-3;
    c.train.checkpoint_every = 0;
    c.train.device = "cpu".into();
    c
}
