//! What a training worker reports. Events carry scalars and ids, never tensors or
//! images; each is one JSON line of `metrics.jsonl` (`{"event":"step",...}`). Every
//! `epoch` counts from 0: the epoch the newest step belongs to (people see it from 1).

use serde::{Deserialize, Serialize};

use crate::run::device::DeviceInfo;
use crate::run::folder::CheckpointKind;

/// Pretrained weights a run started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PretrainedWeights {
    /// As `model.pretrained` names them: a path, or `hf:OWNER/NAME[@REVISION]`.
    pub source: String,
    /// The file read (for a Hub repo, its snapshot in the Hugging Face cache).
    pub file: String,
    /// Backbone tensors set from it.
    pub tensors: usize,
}

/// What a training process says first: the run, its recipe, its data and its
/// device. A resumed run's every process says it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub run: String,
    pub device: String,
    /// The CPU's model or the GPU's name (empty in runs made before it was
    /// recorded, as are the three below).
    #[serde(default)]
    pub device_name: String,
    /// CPU: threads and vector instructions; GPU: compute capability.
    #[serde(default)]
    pub device_detail: String,
    /// RAM for the CPU, device memory for a GPU, in bytes (0 = unknown).
    #[serde(default)]
    pub device_memory_bytes: u64,
    /// Of which free when the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_free_bytes: Option<u64>,
    pub backbone: String,
    pub image_size: u32,
    /// The sampler's units per step: items (P×K) or triplets.
    pub batch: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    /// First step this process runs (non-zero when resumed).
    pub start_step: usize,
    pub resumed: bool,
    /// `loss.kind` (`triplet` in runs made before there was a choice).
    #[serde(default = "triplet")]
    pub loss: String,
    /// `loss.mining`; only meaningful for the triplet loss.
    pub mining: String,
    /// The batch sampler: `pk` or `triplets`.
    #[serde(default)]
    pub sampler: String,
    /// Images per step.
    #[serde(default)]
    pub batch_images: usize,
    pub params: usize,
    pub trainable_params: usize,
    pub train_triplets: usize,
    pub val_queries: usize,
    pub val_gallery: usize,
    /// The weights the backbone started from (`None`: random initialisation, or
    /// a resumed run, whose checkpoint holds every weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PretrainedWeights>,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

impl RunStarted {
    /// The device it records (empty in runs made before it was).
    pub fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.device_name.clone(),
            detail: self.device_detail.clone(),
            memory_bytes: self.device_memory_bytes,
            memory_free_bytes: self.device_memory_free_bytes,
        }
    }
}

/// A validation's figures on the val split. NaN (written `null`) where nothing was
/// measured: no val split, no validation due, no val query with a triplet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValMetrics {
    #[serde(deserialize_with = "nan_if_null::f32")]
    pub val_loss: f32,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub val_top1: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub val_top20: f64,
    #[serde(deserialize_with = "nan_if_null::f64")]
    pub val_map_at_r: f64,
}

impl ValMetrics {
    /// No validation ran.
    pub const NONE: Self = Self {
        val_loss: f32::NAN,
        val_top1: f64::NAN,
        val_top20: f64::NAN,
        val_map_at_r: f64::NAN,
    };

    /// Whether retrieval was measured (an epoch not due a validation was not).
    pub fn measured(&self) -> bool {
        self.val_top20.is_finite()
    }
}

// One `started` per process among thousands of steps: its size costs nothing, and
// boxing it would only make every reader's pattern longer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started(RunStarted),
    /// A resumed run's settings that differ from the ones it was trained with so far
    /// (`RUN/config.toml`), changed by command-line flags; right after `started`.
    SettingsChanged {
        step: usize,
        changes: Vec<SettingChange>,
    },
    /// Validation of the untrained model, before the first step of a fresh run: the
    /// baseline every epoch must beat.
    Baseline(ValMetrics),
    Step {
        step: usize,
        epoch: usize,
        #[serde(deserialize_with = "nan_if_null::f32")]
        loss: f32,
        /// Share of triplets with a positive loss.
        #[serde(deserialize_with = "nan_if_null::f32")]
        active: f32,
        #[serde(deserialize_with = "nan_if_null::f32")]
        d_ap: f32,
        #[serde(deserialize_with = "nan_if_null::f32")]
        d_an: f32,
        #[serde(deserialize_with = "nan_if_null::f64")]
        lr: f64,
        #[serde(deserialize_with = "nan_if_null::f32")]
        grad_norm: f32,
        /// Mean cosine between the batch's embeddings: near 1 is a collapse (absent
        /// in logs written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spread: Option<f32>,
        #[serde(deserialize_with = "nan_if_null::f32")]
        triplets_per_s: f32,
        /// Training images per second (3 per triplet, P·K per P×K batch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        images_per_s: Option<f32>,
        #[serde(deserialize_with = "nan_if_null::f64")]
        elapsed_s: f64,
    },
    /// End of an epoch, with validation on the val split. The val figures are NaN
    /// (`null`) when the dataset has no val split (logs written before that record
    /// 0.0 there).
    Epoch {
        epoch: usize,
        step: usize,
        #[serde(deserialize_with = "nan_if_null::f32")]
        train_loss: f32,
        #[serde(flatten)]
        val: ValMetrics,
        #[serde(deserialize_with = "nan_if_null::f64")]
        seconds: f64,
    },
    /// A validation outside the end of an epoch: the one a run makes when it stops
    /// early (time limit, max steps, a stop request), so it always has a `best`.
    Validated {
        step: usize,
        epoch: usize,
        #[serde(flatten)]
        val: ValMetrics,
        #[serde(deserialize_with = "nan_if_null::f64")]
        seconds: f64,
    },
    Checkpoint {
        step: usize,
        epoch: usize,
        kind: CheckpointKind,
        path: String,
    },
    /// Something the user should know that does not stop training; `kind` tells
    /// the dashboard which ones to keep on screen (`collapse`).
    Notice {
        step: usize,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<NoticeKind>,
    },
    Done {
        step: usize,
        epoch: usize,
        reason: StopReason,
        /// NaN (`null`) when no validation ran.
        #[serde(deserialize_with = "nan_if_null::f64")]
        best_val_top20: f64,
        #[serde(deserialize_with = "nan_if_null::f64")]
        seconds: f64,
    },
    Failed {
        step: usize,
        epoch: usize,
        message: String,
    },
}

/// One setting a resume changed: its dotted key and TOML values (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingChange {
    pub key: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl std::fmt::Display for SettingChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        write!(
            f,
            "{} {} → {}",
            self.key,
            value(&self.from),
            value(&self.to)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All epochs ran.
    Finished,
    /// `--max-steps` reached.
    MaxSteps,
    /// Stopped on request (Ctrl-C, the dashboard's stop key).
    Interrupted,
    /// `--time-limit` reached.
    TimeLimit,
}

impl StopReason {
    /// How a person would say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::MaxSteps => "max steps reached",
            Self::Interrupted => "stopped",
            Self::TimeLimit => "time limit reached",
        }
    }
}

/// Notices the dashboard treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The embeddings are collapsing (or have recovered: `collapse_cleared`).
    Collapse,
    CollapseCleared,
}

fn triplet() -> String {
    "triplet".into()
}

impl TrainEvent {
    /// Whether the run ended with this event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, TrainEvent::Done { .. } | TrainEvent::Failed { .. })
    }

    /// The device a `started` event records (empty in runs made before it was).
    pub fn device_info(&self) -> Option<DeviceInfo> {
        match self {
            TrainEvent::Started(s) => Some(s.device_info()),
            _ => None,
        }
    }
}

/// JSON has no NaN: serde_json writes a non-finite float as `null`. Reading `null`
/// back as NaN lets any reader replay a `metrics.jsonl` holding one (e.g. a val loss
/// over no valid triplet).
mod nan_if_null {
    use serde::{Deserialize, Deserializer};

    pub fn f32<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::TrainEvent;

    /// One line of every event kind, as the trainer writes them: field names and
    /// order are the `metrics.jsonl` format, which old logs and other readers rely on.
    const LINES: &[&str] = &[
        r#"{"event":"started","run":"r","device":"cuda:0","device_name":"NVIDIA H200","device_detail":"compute 9.0","device_memory_bytes":150110011392,"device_memory_free_bytes":149470183424,"backbone":"resnet50","image_size":224,"batch":32,"epochs":10,"steps_per_epoch":100,"total_steps":1000,"start_step":0,"resumed":false,"loss":"norm_softmax","mining":"batch_hard","sampler":"pk","batch_images":128,"params":25000000,"trainable_params":15000000,"train_triplets":3200,"val_queries":200,"val_gallery":198,"pretrained":{"source":"hf:timm/resnet50","file":"/cache/model.safetensors","tensors":320},"time":1795887304.585161}"#,
        r#"{"event":"started","run":"r","device":"cpu","device_name":"","device_detail":"","device_memory_bytes":0,"backbone":"resnet18","image_size":64,"batch":16,"epochs":5,"steps_per_epoch":10,"total_steps":50,"start_step":20,"resumed":true,"loss":"triplet","mining":"batch_hard","sampler":"triplets","batch_images":48,"params":1,"trainable_params":1,"train_triplets":1,"val_queries":0,"val_gallery":0,"time":0.0}"#,
        r#"{"event":"settings_changed","step":20,"changes":[{"key":"train.lr","from":"0.001","to":"0.0001"},{"key":"train.seed","from":null,"to":"7"}]}"#,
        r#"{"event":"baseline","val_loss":0.5,"val_top1":0.125,"val_top20":0.25,"val_map_at_r":0.0625}"#,
        r#"{"event":"baseline","val_loss":null,"val_top1":null,"val_top20":null,"val_map_at_r":null}"#,
        r#"{"event":"step","step":1,"epoch":0,"loss":7.5,"active":1.0,"d_ap":0.5,"d_an":0.75,"lr":0.001,"grad_norm":2.5,"spread":0.25,"triplets_per_s":10.5,"images_per_s":31.5,"elapsed_s":2.0}"#,
        r#"{"event":"step","step":2,"epoch":0,"loss":null,"active":null,"d_ap":null,"d_an":null,"lr":null,"grad_norm":null,"triplets_per_s":null,"elapsed_s":null}"#,
        r#"{"event":"epoch","epoch":0,"step":100,"train_loss":3.25,"val_loss":0.5,"val_top1":0.125,"val_top20":0.525,"val_map_at_r":0.0625,"seconds":60.5}"#,
        r#"{"event":"epoch","epoch":1,"step":200,"train_loss":null,"val_loss":null,"val_top1":null,"val_top20":null,"val_map_at_r":null,"seconds":null}"#,
        r#"{"event":"validated","step":250,"epoch":2,"val_loss":0.5,"val_top1":0.125,"val_top20":0.5,"val_map_at_r":0.0625,"seconds":3.5}"#,
        r#"{"event":"validated","step":250,"epoch":2,"val_loss":null,"val_top1":null,"val_top20":null,"val_map_at_r":null,"seconds":null}"#,
        r#"{"event":"checkpoint","step":100,"epoch":0,"kind":"best","path":"runs/r/checkpoints/best.safetensors"}"#,
        r#"{"event":"notice","step":5,"message":"the embeddings are collapsing","kind":"collapse"}"#,
        r#"{"event":"notice","step":6,"message":"plain"}"#,
        r#"{"event":"done","step":1000,"epoch":9,"reason":"time_limit","best_val_top20":0.525,"seconds":600.0}"#,
        r#"{"event":"done","step":3,"epoch":0,"reason":"max_steps","best_val_top20":null,"seconds":1.5}"#,
        r#"{"event":"failed","step":3,"epoch":0,"message":"out of memory"}"#,
    ];

    #[test]
    fn every_event_kind_writes_back_byte_for_byte() {
        for line in LINES {
            let event: TrainEvent = serde_json::from_str(line).expect(line);
            assert_eq!(serde_json::to_string(&event).expect("json"), *line);
        }
    }

    #[test]
    fn null_figures_read_as_nan() {
        let event: TrainEvent = serde_json::from_str(LINES[8]).expect("an epoch line");
        let json = serde_json::to_value(&event).expect("json");
        assert!(json["val_top20"].is_null() && json["train_loss"].is_null());
        let debug = format!("{event:?}");
        assert_eq!(debug.matches("NaN").count(), 6, "{debug}");
    }
}
