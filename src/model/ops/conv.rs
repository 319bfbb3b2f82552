//! 2-D convolution (groups = 1, no dilation) as one custom op whose forward *and*
//! both gradients are GEMMs on the CPU (`vitrine_kernels::conv`, channels-last).
//!
//! [`conv2d_nhwc`] is the entry point for channels-last tensors, [`conv2d`] for
//! `(N, C, H, W)` ones (it permutes around the op). Both use the op for f32 tensors on
//! the CPU and Candle's `Tensor::conv2d` on every other device or dtype.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use vitrine_kernels::conv::{self, Forward, Geom, Wanted};

use super::tensor::{contiguous_f32, with_f32_data};
use super::{candle_reference_forced, kernel_error, threads};

/// `x (N, C, H, W) ⋆ w (K, C, KH, KW)` with the given stride and zero padding (the
/// same on both axes), groups 1 and dilation 1. On the CPU in f32 the GEMM op (around
/// two permutes), elsewhere `Tensor::conv2d`.
pub fn conv2d(xs: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if uses_gemm_op(xs, w) {
        conv2d_nhwc(&xs.permute((0, 2, 3, 1))?, w, stride, padding)?.permute((0, 3, 1, 2))
    } else {
        xs.conv2d(w, padding, stride, 1, 1)
    }
}

/// Like [`conv2d`] for channels-last `x (N, H, W, C)`, giving `(N, OH, OW, K)`; the
/// kernel keeps torch's `(K, C, KH, KW)` layout.
pub fn conv2d_nhwc(xs: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if uses_gemm_op(xs, w) {
        let xs = xs.contiguous()?;
        let w = w.contiguous()?;
        xs.apply_op2(&w, Conv2dGemm { stride, padding })
    } else {
        xs.permute((0, 3, 1, 2))?
            .conv2d(w, padding, stride, 1, 1)?
            .permute((0, 2, 3, 1))
    }
}

/// Whether [`conv2d`] / [`conv2d_nhwc`] run the GEMM op (CPU, f32) for these operands.
fn uses_gemm_op(xs: &Tensor, w: &Tensor) -> bool {
    xs.device().is_cpu()
        && xs.dtype() == DType::F32
        && w.dtype() == DType::F32
        && !candle_reference_forced()
}

/// The custom op behind [`conv2d_nhwc`] (CPU, f32, contiguous operands): input
/// `(N, H, W, C)`, kernel `(K, C, KH, KW)`, output `(N, OH, OW, K)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGemm {
    pub stride: usize,
    pub padding: usize,
}

impl CustomOp2 for Conv2dGemm {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.padding).map_err(kernel_error)?;
        let x = contiguous_f32(s1, l1)?;
        let wt = contiguous_f32(s2, l2)?;
        let y = conv::forward(x, wt, &g, Forward::plain(threads()));
        let (oh, ow, k) = g.out_dims();
        Ok((CpuStorage::F32(y), Shape::from((l1.dims()[0], oh, ow, k))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), wt.dims(), self.stride, self.padding).map_err(kernel_error)?;
        let wanted = Wanted {
            dx: x.track_op(),
            dw: wt.track_op(),
        };
        let dy = dy.contiguous()?;
        let grads = with_f32_data(x, |xd| {
            with_f32_data(wt, |wd| {
                with_f32_data(&dy, |dyd| {
                    Ok(conv::backward(xd, wd, dyd, &g, wanted, threads()))
                })
            })
        })?;
        let dx = grads
            .dx
            .map(|v| Tensor::from_vec(v, x.shape(), x.device()))
            .transpose()?;
        let dw = grads
            .dw
            .map(|v| Tensor::from_vec(v, wt.shape(), wt.device()))
            .transpose()?;
        Ok((dx, dw))
    }
}
