//! Borrowing the f32 data of CPU tensors inside the custom ops (and the optimizer's
//! fused update, the weight average), without copies.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The contiguous f32 data of a CPU storage's layout.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("custom CPU op: operand must be contiguous")
    };
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// The contiguous f32 data of a CPU storage's layout, to write in place.
pub(crate) fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("custom CPU op: operand must be contiguous")
    };
    match s {
        CpuStorage::F32(data) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("custom CPU op: f32 data expected"),
    }
}

/// Runs `f` on the contiguous f32 CPU data of `t`.
pub(crate) fn with_f32_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(contiguous_f32(s, layout)?),
        _ => candle_core::bail!("custom CPU op: CPU tensors only"),
    }
}
