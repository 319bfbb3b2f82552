//! The embedder: a trainable ResNet backbone (torchvision parameter names), the
//! embedding head, triplet losses and checkpoint files.
