//! Weights on disk: safetensors files of a [`VarMap`] (parameters and BatchNorm
//! running statistics, which are variables too), written atomically, loaded only after
//! every name and shape was checked.
//!
//! Two ways in:
//! - [`load_full`]: our own checkpoints; every variable, head included, must be in the
//!   file with its shape, and the file must hold nothing else.
//! - [`load_pretrained_backbone`]: an ImageNet `state_dict` from torchvision or timm
//!   exported to safetensors; every backbone variable must be present, `head.*` is
//!   not read (the head keeps its fresh values), `fc.*` is ignored.
//!
//! Both ignore `*.num_batches_tracked`, accept f32/f64/f16/bf16 tensors (converted to
//! the variable's dtype), and leave the map untouched when they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::embedder::sorted_vars;
use super::resnet::Backbone;
use crate::fsutil::{fnv1a64, write_bytes_atomic};

/// How many names per list [`CheckpointError::Mismatch`]'s message shows.
const SHOWN_NAMES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a readable safetensors file: {source}", path.display())]
    Format {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{}: tensor {name} has dtype {dtype}; weights must be f32, f64, f16 or bf16", path.display())]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{}: {}{}", path.display(), mismatch_message(missing, unexpected, mis_shaped), hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    Mismatch {
        path: PathBuf,
        /// Model variables the file lacks.
        missing: Vec<String>,
        /// File tensors the model has no variable for.
        unexpected: Vec<String>,
        /// `(name, shape in the file, shape in the model)`.
        mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
        /// The file's ResNet when it is not the model's (boxed: keeps the error
        /// small enough to return by value).
        hint: Option<Box<OtherResnet>>,
    },
    #[error("{}: {source}", path.display())]
    Tensor {
        path: PathBuf,
        source: candle_core::Error,
    },
}

fn shown<T>(items: &[T], fmt: impl Fn(&T) -> String) -> String {
    let mut s = items
        .iter()
        .take(SHOWN_NAMES)
        .map(fmt)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN_NAMES {
        let _ = write!(s, ", … ({} more)", items.len() - SHOWN_NAMES);
    }
    s
}

fn mismatch_message(
    missing: &[String],
    unexpected: &[String],
    mis_shaped: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut parts = vec!["weights do not fit the model".to_owned()];
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing: {}",
            missing.len(),
            shown(missing, Clone::clone)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected: {}",
            unexpected.len(),
            shown(unexpected, Clone::clone)
        ));
    }
    if !mis_shaped.is_empty() {
        parts.push(format!(
            "{} mis-shaped: {}",
            mis_shaped.len(),
            shown(mis_shaped, |(n, file, model)| format!(
                "{n} (file {file:?}, model {model:?})"
            ))
        ));
    }
    parts.join("; ")
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables set from the file.
    pub loaded: usize,
    /// File tensors skipped on purpose (`num_batches_tracked`, `fc.*`, `head.*`), sorted.
    pub ignored: Vec<String>,
}

/// Every variable of `varmap` as safetensors bytes (names sorted).
pub fn serialize(varmap: &VarMap) -> candle_core::Result<Vec<u8>> {
    let tensors = sorted_vars(varmap)
        .into_iter()
        .map(|(name, var)| Ok((name, var.as_tensor().to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<Vec<(String, Tensor)>>>()?;
    safetensors::tensor::serialize(tensors, None).map_err(candle_core::Error::wrap)
}

/// Saves every variable of `varmap` to `path` (safetensors, names sorted), through a
/// temporary sibling file renamed into place.
pub fn save(varmap: &VarMap, path: &Path) -> Result<(), CheckpointError> {
    let bytes = serialize(varmap).map_err(|source| CheckpointError::Tensor {
        path: path.to_owned(),
        source,
    })?;
    write_bytes_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Loads one of our own checkpoints: names and shapes must match `varmap` exactly.
pub fn load_full(varmap: &VarMap, path: &Path) -> Result<LoadReport, CheckpointError> {
    load(varmap, path, false)
}

/// Loads an ImageNet backbone (torchvision/timm names): every backbone variable must
/// be in the file; `head.*` (and `fc.*`) in the file are not read.
pub fn load_pretrained_backbone(
    varmap: &VarMap,
    path: &Path,
) -> Result<LoadReport, CheckpointError> {
    load(varmap, path, true)
}

/// The embedder's own layers after the backbone, which ImageNet files do not have.
fn is_head(name: &str) -> bool {
    name.starts_with("head.") || name.starts_with("neck.")
}

fn load(varmap: &VarMap, path: &Path, backbone_only: bool) -> Result<LoadReport, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file = candle_core::safetensors::SliceSafetensors::new(&bytes).map_err(|source| {
        CheckpointError::Format {
            path: path.to_owned(),
            source,
        }
    })?;
    let ignored_name = |name: &str| {
        name.ends_with(".num_batches_tracked")
            || (backbone_only && (name.starts_with("fc.") || is_head(name)))
    };
    let mut report = LoadReport::default();
    let mut in_file: BTreeMap<String, (Vec<usize>, safetensors::Dtype)> = BTreeMap::new();
    for (name, view) in file.tensors() {
        if ignored_name(&name) {
            report.ignored.push(name);
        } else {
            in_file.insert(name, (view.shape().to_vec(), view.dtype()));
        }
    }
    report.ignored.sort();

    let wanted: Vec<_> = sorted_vars(varmap)
        .into_iter()
        .filter(|(name, _)| !(backbone_only && is_head(name)))
        .collect();
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
    let mut missing = Vec::new();
    let mut mis_shaped = Vec::new();
    for (name, var) in &wanted {
        match in_file.get(name) {
            None => missing.push(name.clone()),
            Some((shape, _)) if shape.as_slice() != var.dims() => {
                mis_shaped.push((name.clone(), shape.clone(), var.dims().to_vec()));
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = in_file
        .keys()
        .filter(|n| !wanted_names.contains(n.as_str()))
        .cloned()
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mis_shaped.is_empty()) {
        let hint = architecture_hint(
            in_file.keys().map(String::as_str),
            wanted.iter().map(|(n, _)| n.as_str()),
        )
        .map(Box::new);
        return Err(CheckpointError::Mismatch {
            path: path.to_owned(),
            missing,
            unexpected,
            mis_shaped,
            hint,
        });
    }
    for (name, (_, dtype)) in &in_file {
        use safetensors::Dtype as S;
        if !matches!(dtype, S::F32 | S::F64 | S::F16 | S::BF16) {
            return Err(CheckpointError::Dtype {
                path: path.to_owned(),
                name: name.clone(),
                dtype: format!("{dtype:?}"),
            });
        }
    }
    // Convert everything first, so a failure leaves the map untouched.
    let tensor_err = |source| CheckpointError::Tensor {
        path: path.to_owned(),
        source,
    };
    let values = wanted
        .iter()
        .map(|(name, var)| {
            file.load(name, &Device::Cpu)?
                .to_dtype(var.dtype())?
                .to_device(var.device())
        })
        .collect::<candle_core::Result<Vec<Tensor>>>()
        .map_err(tensor_err)?;
    for ((_, var), value) in wanted.iter().zip(&values) {
        var.set(value).map_err(tensor_err)?;
    }
    report.loaded = values.len();
    Ok(report)
}

/// The ResNet a set of torchvision/timm tensor names describes: blocks per stage
/// (`layerS.B.…`) and whether they are bottlenecks (which have a `conv3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResnetShape {
    pub blocks: [usize; 4],
    pub bottleneck: bool,
}

impl ResnetShape {
    /// `None` when no name is a `layer1`..`layer4` block's.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut shape = Self {
            blocks: [0; 4],
            bottleneck: false,
        };
        for name in names {
            let mut parts = name.split('.');
            let (Some(stage), Some(block), Some(part)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Some(Ok(stage)), Ok(block)) = (
                stage.strip_prefix("layer").map(str::parse::<usize>),
                block.parse::<usize>(),
            ) else {
                continue;
            };
            if (1..=4).contains(&stage) {
                shape.blocks[stage - 1] = shape.blocks[stage - 1].max(block + 1);
                shape.bottleneck |= part == "conv3";
            }
        }
        (shape.blocks != [0; 4]).then_some(shape)
    }

    /// The backbone of that shape, if vitrine has it.
    pub fn backbone(self) -> Option<Backbone> {
        [Backbone::Resnet18, Backbone::Resnet34, Backbone::Resnet50]
            .into_iter()
            .find(|b| b.layers() == self.blocks && b.bottleneck() == self.bottleneck)
    }
}

/// A file that holds another ResNet than the model; shown as what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherResnet {
    pub file: ResnetShape,
    pub model: Option<Backbone>,
}

impl std::fmt::Display for OtherResnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = self.model.map_or("different one", Backbone::as_str);
        match self.file.backbone() {
            Some(b) => write!(
                f,
                "the file holds a {b} backbone, the model a {model}: set model.backbone = \"{b}\" (or --backbone {b})"
            ),
            None => write!(
                f,
                "the file holds a ResNet with {:?} {} blocks per stage, which is none of resnet18, resnet34, resnet50",
                self.file.blocks,
                if self.file.bottleneck {
                    "bottleneck"
                } else {
                    "basic"
                }
            ),
        }
    }
}

/// The file's ResNet when it differs from the model's; `None` when the shapes
/// agree (a broken or foreign file: the listed names say more).
fn architecture_hint<'a>(
    file: impl IntoIterator<Item = &'a str>,
    model: impl IntoIterator<Item = &'a str>,
) -> Option<OtherResnet> {
    let file = ResnetShape::of(file)?;
    let model = ResnetShape::of(model);
    (Some(file) != model).then(|| OtherResnet {
        file,
        model: model.and_then(ResnetShape::backbone),
    })
}

/// A content fingerprint of `varmap`: 16 hex digits of FNV-1a over the sorted
/// `name dtype shape hash` lines, each `hash` FNV-1a over the tensor's bytes. Equal
/// weights give equal fingerprints whichever file or device they came from.
pub fn fingerprint(varmap: &VarMap) -> candle_core::Result<String> {
    let tensors = sorted_vars(varmap)
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().clone()));
    fingerprint_tensors(tensors)
}

/// [`fingerprint`] of the weights in a checkpoint file, without a model: what its
/// sidecar must name.
pub fn fingerprint_saved(path: &Path) -> Result<String, CheckpointError> {
    let mut tensors: Vec<(String, Tensor)> = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|source| CheckpointError::Format {
            path: path.to_owned(),
            source,
        })?
        .into_iter()
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    fingerprint_tensors(tensors.into_iter()).map_err(|source| CheckpointError::Tensor {
        path: path.to_owned(),
        source,
    })
}

/// `tensors` must come sorted by name.
fn fingerprint_tensors(
    tensors: impl Iterator<Item = (String, Tensor)>,
) -> candle_core::Result<String> {
    let mut manifest = String::new();
    for (name, tensor) in tensors {
        let t = tensor.to_device(&Device::Cpu)?.flatten_all()?;
        let bytes: Vec<u8> = match t.dtype() {
            DType::F32 => t
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => t
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let _ = writeln!(
            manifest,
            "{name} {:?} {:?} {:016x}",
            t.dtype(),
            tensor.dims(),
            fnv1a64(&bytes)
        );
    }
    Ok(format!("{:016x}", fnv1a64(manifest.as_bytes())))
}

/// 16 hex digits of FNV-1a over a file's bytes ([`save`] writes the same bytes for
/// the same weights).
pub fn fingerprint_file(path: &Path) -> Result<String, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(format!("{:016x}", fnv1a64(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torchvision's names of a ResNet's blocks.
    fn names(blocks: [usize; 4], bottleneck: bool) -> Vec<String> {
        let mut out = vec!["conv1.weight".to_owned(), "fc.weight".to_owned()];
        for (s, &n) in blocks.iter().enumerate() {
            for b in 0..n {
                let convs = if bottleneck { 3 } else { 2 };
                for c in 1..=convs {
                    out.push(format!("layer{}.{b}.conv{c}.weight", s + 1));
                    out.push(format!("layer{}.{b}.bn{c}.running_var", s + 1));
                }
            }
        }
        out
    }

    #[test]
    fn the_resnet_a_file_holds_is_named_when_it_is_not_the_models() {
        let of = |b: [usize; 4], neck| ResnetShape::of(names(b, neck).iter().map(String::as_str));
        for backbone in [Backbone::Resnet18, Backbone::Resnet34, Backbone::Resnet50] {
            let shape = of(backbone.layers(), backbone.bottleneck()).expect("shape");
            assert_eq!(shape.backbone(), Some(backbone));
        }
        let r18 = names([2, 2, 2, 2], false);
        let r50 = names([3, 4, 6, 3], true);
        let hint = architecture_hint(
            r50.iter().map(String::as_str),
            r18.iter().map(String::as_str),
        )
        .expect("a hint")
        .to_string();
        assert!(
            hint.contains("resnet50 backbone, the model a resnet18")
                && hint.contains("model.backbone = \"resnet50\""),
            "{hint}"
        );
        let r101 = names([3, 4, 23, 3], true);
        let hint = architecture_hint(
            r101.iter().map(String::as_str),
            r50.iter().map(String::as_str),
        )
        .expect("a hint")
        .to_string();
        assert!(hint.contains("[3, 4, 23, 3] bottleneck"), "{hint}");
        assert_eq!(
            architecture_hint(
                r18.iter().map(String::as_str),
                r18.iter().map(String::as_str)
            ),
            None
        );
        assert_eq!(ResnetShape::of(["conv1.weight", "fc.bias"]), None);
    }
}
