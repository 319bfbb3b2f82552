//! Datasets: the DeepFashion Consumer-to-shop layout, the synthetic generator that
//! writes it, plain image folders, triplet sampling and the batch loader.

pub mod deepfashion;
pub mod folder;
pub mod loader;
pub mod synth;
pub mod triplets;
