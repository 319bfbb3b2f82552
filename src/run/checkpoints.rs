//! A checkpoint as one unit: its weights, for `last` the optimizer state, and the
//! sidecar (`last.json`), which is the manifest: it is written last and names the
//! weights' fingerprint and the step the optimizer state belongs to. A set is
//! *consistent* when those agree.
//!
//! Writing: all files are staged under temporary names first (a full disk fails
//! here, before anything changes); the current set is then kept as hard links
//! (`.prev.last.safetensors`, …), the new files are renamed into place, manifest
//! last, and the kept set is removed. A crash at any moment leaves a consistent set
//! either in place or kept; [`recover`] puts the kept one back.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::folder::{CheckpointKind, RunDir};
use crate::eval::Retrieval;
use crate::fsutil::{self, Staged};
use crate::model::checkpoint;

/// 2: `epoch` is the epoch of the newest step (as in every event) and `epoch_done`
/// says whether its end was reached; in format 1 `epoch` was the epoch to resume in.
pub const CHECKPOINT_FORMAT: u32 = 2;

/// The optimizer state's record of its step.
pub const OPTIM_STEP: &str = "optim.step";

/// Saved beside (and inside) every checkpoint; what `--resume` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    /// Epoch of the newest step, counted from 0 as in every event, and the sampler's
    /// units (triplets or items) of it already trained.
    pub epoch: usize,
    pub epoch_position: usize,
    /// The epoch's end (its validation) is done: a resume starts the next epoch.
    #[serde(default)]
    pub epoch_done: bool,
    /// Optimizer steps done.
    pub step: usize,
    pub best_val_top20: Option<f64>,
    pub val: Option<Retrieval>,
    pub optimizer_t: u64,
    pub fingerprint: String,
    pub config_hash: String,
    pub backbone: String,
    pub image_size: u32,
    pub embedding_dim: usize,
    /// The trainer's own state a resume continues from (time budget, collapse
    /// monitor, …); its shape belongs to `train/resume.rs`.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub trainer: serde_json::Value,
}

/// The sidecar JSON of a checkpoint (`last.safetensors` → `last.json`).
pub fn sidecar_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("json")
}

/// The files of one checkpoint, in the order they are put in place.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub weights: PathBuf,
    /// Only `last` keeps optimizer state (only `last` resumes).
    pub optim: Option<PathBuf>,
    pub sidecar: PathBuf,
}

impl CheckpointFiles {
    pub fn of(run: &RunDir, kind: CheckpointKind) -> Self {
        let weights = run.checkpoint(kind);
        Self {
            sidecar: sidecar_path(&weights),
            optim: (kind == CheckpointKind::Last).then(|| run.optimizer_state()),
            weights,
        }
    }

    fn members(&self) -> Vec<&Path> {
        let mut m = vec![self.weights.as_path()];
        m.extend(self.optim.as_deref());
        m.push(&self.sidecar);
        m
    }
}

/// Where a member is kept while a new set goes in.
fn kept(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".prev.");
    name.push(path.file_name().unwrap_or_default());
    path.with_file_name(name)
}

fn dir_of(files: &CheckpointFiles) -> &Path {
    files.weights.parent().unwrap_or(Path::new("."))
}

/// The bytes of one new checkpoint, ready to be written.
pub struct NewCheckpoint<'a> {
    pub weights: &'a [u8],
    pub optim: Option<&'a [u8]>,
    pub meta: &'a CheckpointMeta,
}

/// Writes a new set in place of `files` (see the module doc). On error the previous
/// set is untouched and the error names the file that failed.
pub fn write(files: &CheckpointFiles, new: &NewCheckpoint<'_>) -> Result<(), (PathBuf, io::Error)> {
    let json = serde_json::to_vec_pretty(new.meta)
        .map_err(|e| (files.sidecar.clone(), io::Error::other(e)))?;
    let stage =
        |path: &Path, bytes: &[u8]| Staged::bytes(path, bytes).map_err(|e| (path.to_path_buf(), e));
    let mut staged = vec![stage(&files.weights, new.weights)?];
    if let (Some(path), Some(bytes)) = (&files.optim, new.optim) {
        staged.push(stage(path, bytes)?);
    }
    staged.push(stage(&files.sidecar, &json)?);
    let dir = dir_of(files);
    // Keep the current set until the new one is complete.
    for m in files.members() {
        let k = kept(m);
        let _ = fs::remove_file(&k);
        if m.exists() {
            fs::hard_link(m, &k)
                .or_else(|_| fs::copy(m, &k).map(|_| ()))
                .map_err(|e| (k.clone(), e))?;
        }
    }
    fsutil::sync_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
    for (i, s) in staged.into_iter().enumerate() {
        let path = s.path().to_path_buf();
        s.commit().map_err(|e| (path, e))?;
        if i == 0 {
            fsutil::crash_point("checkpoint-commit");
        }
    }
    fsutil::sync_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
    for m in files.members() {
        let _ = fs::remove_file(kept(m));
    }
    Ok(())
}

fn read_meta_at(path: &Path) -> Option<CheckpointMeta> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// The step recorded in an optimizer state file.
pub fn optim_step(path: &Path) -> Option<usize> {
    let bytes = fs::read(path).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let view = st.tensor(OPTIM_STEP).ok()?;
    let data: [u8; 4] = view.data().get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(data) as usize)
}

/// Whether the manifest, weights and optimizer state at these paths agree.
fn consistent(weights: &Path, optim: Option<&Path>, sidecar: &Path) -> bool {
    let Some(meta) = read_meta_at(sidecar) else {
        return false;
    };
    let weights_ok = checkpoint::fingerprint_saved(weights).is_ok_and(|f| f == meta.fingerprint);
    weights_ok && optim.is_none_or(|o| optim_step(o) == Some(meta.step))
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The set in place is consistent (or there is none).
    Intact,
    /// An interrupted write was rolled back to the kept set of this step.
    RolledBack { step: usize },
    /// The set is inconsistent and no consistent kept set exists.
    Broken,
}

/// Repairs an interrupted [`write`]: an inconsistent set is replaced by the kept one
/// when that is consistent; leftovers of finished writes are removed. Call it with
/// the run's lock held.
pub fn recover(files: &CheckpointFiles) -> io::Result<Recovery> {
    fsutil::remove_stale_temps(dir_of(files));
    let members = files.members();
    let in_place = || consistent(&files.weights, files.optim.as_deref(), &files.sidecar);
    let remove_kept = || {
        for m in &members {
            let _ = fs::remove_file(kept(m));
        }
    };
    if !files.sidecar.exists() && !files.weights.exists() || in_place() {
        remove_kept();
        return Ok(Recovery::Intact);
    }
    let k_optim = files.optim.as_deref().map(kept);
    if !consistent(
        &kept(&files.weights),
        k_optim.as_deref(),
        &kept(&files.sidecar),
    ) {
        return Ok(Recovery::Broken);
    }
    let step = read_meta_at(&kept(&files.sidecar)).map_or(0, |m| m.step);
    for m in &members {
        fs::rename(kept(m), m)?;
    }
    fsutil::sync_dir(dir_of(files))?;
    // A rename onto another link of the same file leaves both names.
    remove_kept();
    Ok(Recovery::RolledBack { step })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(step: usize, fingerprint: String) -> CheckpointMeta {
        CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            epoch: 0,
            epoch_position: 0,
            epoch_done: false,
            step,
            best_val_top20: None,
            val: None,
            optimizer_t: step as u64,
            fingerprint,
            config_hash: String::new(),
            backbone: "resnet18".into(),
            image_size: 32,
            embedding_dim: 8,
            trainer: serde_json::Value::Null,
        }
    }

    /// Fake weights whose fingerprint is known, and an optimizer file at `step`.
    fn set(step: usize) -> (Vec<u8>, Vec<u8>, CheckpointMeta) {
        let w = candle_core::Tensor::new(&[step as f32, 1.0], &candle_core::Device::Cpu)
            .expect("tensor");
        let weights = safetensors::tensor::serialize([("w".to_string(), w)], None).expect("ser");
        let s = candle_core::Tensor::new(&[step as u32], &candle_core::Device::Cpu).expect("t");
        let optim =
            safetensors::tensor::serialize([(OPTIM_STEP.to_string(), s)], None).expect("ser");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("w.safetensors");
        fs::write(&p, &weights).expect("write");
        let fp = checkpoint::fingerprint_saved(&p).expect("fingerprint");
        (weights, optim, meta(step, fp))
    }

    fn write_set(files: &CheckpointFiles, step: usize) {
        let (w, o, m) = set(step);
        write(
            files,
            &NewCheckpoint {
                weights: &w,
                optim: Some(&o),
                meta: &m,
            },
        )
        .expect("write");
    }

    #[test]
    fn a_write_interrupted_between_renames_rolls_back_to_the_kept_set() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(tmp.path());
        run.create().expect("create");
        let files = CheckpointFiles::of(&run, CheckpointKind::Last);
        write_set(&files, 10);
        assert_eq!(recover(&files).expect("recover"), Recovery::Intact);
        // Simulate a crash after the new weights went in: keep the set, then rename
        // only the weights of step 20.
        for m in files.members() {
            fs::hard_link(m, kept(m)).expect("keep");
        }
        let (w, _, _) = set(20);
        // A rename gives the path a new file; the kept link keeps the old one.
        fs::remove_file(&files.weights).expect("unlink");
        fs::write(&files.weights, w).expect("weights");
        assert!(!consistent(
            &files.weights,
            files.optim.as_deref(),
            &files.sidecar
        ));
        assert_eq!(
            recover(&files).expect("recover"),
            Recovery::RolledBack { step: 10 }
        );
        assert!(consistent(
            &files.weights,
            files.optim.as_deref(),
            &files.sidecar
        ));
        // Finished: no kept files, no temporary files.
        let names: Vec<_> = fs::read_dir(tmp.path().join("checkpoints"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn an_inconsistent_set_without_a_kept_one_is_reported_broken() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(tmp.path());
        run.create().expect("create");
        let files = CheckpointFiles::of(&run, CheckpointKind::Last);
        write_set(&files, 5);
        let (w, _, _) = set(6);
        fs::remove_file(&files.weights).expect("unlink");
        fs::write(&files.weights, w).expect("weights");
        assert_eq!(recover(&files).expect("recover"), Recovery::Broken);
    }
}
