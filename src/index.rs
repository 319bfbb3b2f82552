//! Embedding images with a trained embedder (and, later, the gallery index).

pub mod embed;
