//! The embedder: a trainable ResNet backbone (torchvision parameter names), the
//! embedding head, triplet losses and checkpoint files.

pub mod batchnorm;
pub mod checkpoint;
pub mod conv;
mod cpu_backbone;
pub(crate) mod cpu_tensor;
pub mod embed_files;
pub mod embedder;
pub mod loss;
pub mod resnet;
mod simd;
mod winograd;

pub use checkpoint::CheckpointError;
pub use embedder::{Backbone, Embedder, EmbedderConfig, ParamGroups};
pub use loss::{Criterion, LossConfig, LossKind, LossStats, Mining, TripletLoss};
