//! Datasets: the DeepFashion Consumer-to-shop layout, the synthetic generator that
//! writes it, plain image folders, triplet and P×K sampling, augmentation and the batch loader.

pub mod augment;
pub mod deepfashion;
pub mod folder;
pub mod loader;
pub mod sampler;
pub mod synth;
pub mod triplets;
