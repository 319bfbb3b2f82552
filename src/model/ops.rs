//! Candle glue over the CPU kernels of `vitrine-kernels`: custom ops that borrow the
//! f32 data of contiguous CPU tensors, run a kernel on the slices and hand the result
//! (and, in `bwd`, the gradients) back as tensors.
//!
//! - [`conv`]: 2-D convolution whose forward and both gradients are GEMMs;
//! - [`batch_norm`]: BatchNorm (+ ReLU) as one fused op, with the running-statistics
//!   update of `candle_nn::BatchNorm`;
//! - [`backbone`]: a whole [`ResNet`](super::resnet::ResNet) forward and backward as
//!   one op (`ResNet::forward_pooled`), walking the network's own layers.
//!
//! `conv` and `batch_norm` know nothing of ResNet (`resnet` builds on them);
//! `backbone` runs a `ResNet`. Every op falls back to Candle's own implementation on
//! other devices and dtypes (a CPU custom op has no GPU path), and everywhere when
//! `VITRINE_CANDLE_CONV=1` ([`candle_reference_forced`]).

pub mod backbone;
pub mod batch_norm;
pub mod conv;
pub(crate) mod tensor;

/// Whether `VITRINE_CANDLE_CONV=1` asks for Candle's own conv and BatchNorm everywhere
/// (read once): a switch for before/after profiles, not a setting.
pub(crate) fn candle_reference_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("VITRINE_CANDLE_CONV").is_ok_and(|v| v == "1"))
}

/// Threads the kernels split their GEMMs over: Candle's CPU thread count.
fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// A kernel's refusal as a Candle error.
fn kernel_error(e: vitrine_kernels::Error) -> candle_core::Error {
    candle_core::Error::msg(e)
}
