//! The embedder: a trainable ResNet backbone (torchvision parameter names), the
//! embedding head, triplet losses and checkpoint files; [`ops`] holds the Candle
//! custom ops over the CPU kernels of `vitrine-kernels`.

pub mod checkpoint;
pub mod embed_files;
pub mod embedder;
pub mod loss;
pub mod ops;
pub mod resnet;

pub use checkpoint::CheckpointError;
pub use embedder::{Backbone, Embedder, EmbedderConfig, ParamGroups, Precision};
pub use loss::{Criterion, LossConfig, LossKind, LossStats, Mining, TripletLoss};
