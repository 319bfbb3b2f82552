//! The ResNet backbone's forward and backward on the CPU as one custom op, outside
//! Candle's autograd.
//!
//! Candle's autograd charges every node a zero-filled gradient buffer and an add
//! (`GradStore::or_insert` + `add`), runs a ReLU's backward as three ops and the
//! residual sum as two accumulations, and allocates every intermediate afresh; for
//! ResNet50 at 128 px that was about a third of a training step. [`pooled_features`]
//! runs the whole backbone — conv, BatchNorm, ReLU, residual sums, the stem's max-pool
//! and the global average pool — as one `CustomOp2` whose second operand is the
//! concatenation of the trainable parameters: Candle's `cat` backward hands each
//! parameter its slice of the op's gradient, so `loss.backward()` and the optimizer
//! work unchanged. Activations are channels-last; convs and BatchNorms use the kernels
//! of [`super::conv`] and [`super::batchnorm`]; the last BatchNorm of a block, the
//! shortcut's BatchNorm, the residual sum and its ReLU are a single pass.
//!
//! It computes the same function as the per-op path (`ResNet::forward_in`, checked
//! by the tests, gradients included), with torch's max-pool tie rule (the first
//! maximum gets the gradient).

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use candle_nn::{BatchNorm, Conv2d};
use rayon::prelude::*;

use super::batchnorm::{self as bn, Affine, Stats};
use super::conv::{self, Geom, Pass};
use super::cpu_tensor::contiguous_f32;
use super::simd::vectorized;

/// A conv and the BatchNorm after it.
#[derive(Debug, Clone)]
pub(crate) struct Unit {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// A residual block: its convs (the last one without ReLU) and the optional
/// projection shortcut.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub units: Vec<Unit>,
    pub downsample: Option<Unit>,
    /// Whether the block's stage trains (batch statistics, gradients).
    pub trainable: bool,
}

/// The backbone as the op sees it.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    pub stem: Unit,
    pub stem_trainable: bool,
    pub blocks: Vec<Block>,
}

impl Net {
    /// Every unit in forward order with whether it trains.
    fn units(&self) -> Vec<(&Unit, bool)> {
        let mut all = vec![(&self.stem, self.stem_trainable)];
        for b in &self.blocks {
            all.extend(b.units.iter().map(|u| (u, b.trainable)));
            all.extend(b.downsample.iter().map(|u| (u, b.trainable)));
        }
        all
    }

    /// Whether any parameter trains.
    fn any_trainable(&self) -> bool {
        self.stem_trainable || self.blocks.iter().any(|b| b.trainable)
    }
}

/// `(N, C)` global-average-pooled features of images `xs (N, 3, H, W)` (CPU, f32).
///
/// In train mode, trainable stages use batch statistics (their running statistics
/// are updated) and the result carries the gradient of every trainable parameter;
/// frozen stages and eval mode use the running statistics.
pub(crate) fn pooled_features(net: &Net, xs: &Tensor, train: bool) -> Result<Tensor> {
    conv::keep_freed_memory();
    let units = net.units();
    let plan: Vec<UnitPlan> = units
        .iter()
        .map(|(u, trains)| {
            let batch = train && *trains;
            let cfg = u.conv.config();
            let Some((gamma, beta)) = u.bn.weight_and_bias() else {
                candle_core::bail!("backbone: BatchNorm without affine parameters")
            };
            Ok(UnitPlan {
                weight: u.conv.weight().clone(),
                gamma: gamma.clone(),
                beta: beta.clone(),
                stride: cfg.stride,
                pad: cfg.padding,
                eps: u.bn.eps(),
                fixed: (!batch).then(|| bn::running_stats(&u.bn)).transpose()?,
            })
        })
        .collect::<Result<_>>()?;
    let trainable: Vec<Tensor> = if train && net.any_trainable() {
        plan.iter()
            .filter(|p| p.fixed.is_none())
            .flat_map(|p| [&p.weight, &p.gamma, &p.beta])
            .map(Tensor::flatten_all)
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let op = BackboneOp {
        units_per_block: net.blocks.iter().map(|b| b.units.len()).collect(),
        downsampled: net.blocks.iter().map(|b| b.downsample.is_some()).collect(),
        trainable_blocks: net.blocks.iter().map(|b| b.trainable).collect(),
        plan,
        tape: Arc::new(Mutex::new(None)),
        batch_stats: Arc::new(Mutex::new(Vec::new())),
    };
    let batch_stats = Arc::clone(&op.batch_stats);
    let xs = xs.contiguous()?;
    let out = if trainable.is_empty() {
        let (data, shape) = {
            let (s, l) = xs.storage_and_layout();
            let Storage::Cpu(s) = &*s else {
                candle_core::bail!("backbone: CPU tensors only")
            };
            op.forward(contiguous_f32(s, l)?, xs.dims(), false)?
        };
        Tensor::from_vec(data, shape, xs.device())?
    } else {
        xs.apply_op2(&Tensor::cat(&trainable, 0)?, op)?
    };
    let stats = std::mem::take(&mut *lock(&batch_stats));
    for ((u, _), s) in units.iter().zip(stats) {
        if let Some(s) = s {
            bn::update_running_stats(&u.bn, &s)?;
        }
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One conv + BatchNorm for one pass: parameter handles and where its statistics
/// come from.
#[derive(Debug)]
struct UnitPlan {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    stride: usize,
    pad: usize,
    eps: f64,
    /// Running statistics when the unit does not normalise with the batch's.
    fixed: Option<Stats>,
}

/// A channels-last activation `(N, H, W, C)`.
#[derive(Debug, Clone)]
struct Act {
    data: Arc<Vec<f32>>,
    dims: [usize; 4],
}

impl Act {
    fn new(data: Vec<f32>, dims: [usize; 4]) -> Self {
        Self {
            data: Arc::new(data),
            dims,
        }
    }
}

/// What one unit's backward needs: its input, its conv output (the BatchNorm's
/// input) and the statistics it was normalised with.
#[derive(Debug)]
struct UnitTape {
    input: Act,
    pre_bn: Vec<f32>,
    geom: Geom,
    stats: Stats,
}

/// What a block's backward needs.
#[derive(Debug)]
struct BlockTape {
    units: Vec<UnitTape>,
    downsample: Option<UnitTape>,
    /// The block's output (after the final ReLU): its mask.
    output: Act,
}

/// Everything the backward pass needs from the forward.
#[derive(Debug)]
struct Tape {
    /// The stem's, when it trains.
    stem: Option<UnitTape>,
    /// The stem's max-pool: tap (0..9) of each output's maximum, and the pooled dims.
    pool_arg: Vec<u8>,
    pool_dims: [usize; 4],
    blocks: Vec<Option<BlockTape>>,
    /// Dims of the last feature map (before global pooling).
    features: [usize; 4],
}

/// The op: `(images (N, 3, H, W), trainable parameters concatenated)` → `(N, C)`.
struct BackboneOp {
    /// Units per block.
    units_per_block: Vec<usize>,
    downsampled: Vec<bool>,
    trainable_blocks: Vec<bool>,
    /// Units in forward order: stem, then each block's convs and its downsample.
    plan: Vec<UnitPlan>,
    tape: Arc<Mutex<Option<Tape>>>,
    /// Batch statistics of the units that used them (train mode), in plan order.
    batch_stats: Arc<Mutex<Vec<Option<Stats>>>>,
}

/// Read access to the parameters' data for the length of one pass.
struct ParamData<'a> {
    guards: Vec<(Box<dyn Deref<Target = Storage> + 'a>, &'a Layout)>,
}

impl<'a> ParamData<'a> {
    fn new(plan: &'a [UnitPlan]) -> Self {
        let guards = plan
            .iter()
            .flat_map(|p| [&p.weight, &p.gamma, &p.beta])
            .map(|t| {
                let (s, l) = t.storage_and_layout();
                (Box::new(s) as Box<dyn Deref<Target = Storage>>, l)
            })
            .collect();
        Self { guards }
    }

    /// `(weight, gamma, beta)` of unit `i`.
    fn unit(&self, i: usize) -> Result<(&[f32], &[f32], &[f32])> {
        let get = |j: usize| -> Result<&[f32]> {
            let (s, l) = &self.guards[3 * i + j];
            match &***s {
                Storage::Cpu(s) => contiguous_f32(s, l),
                _ => candle_core::bail!("backbone: CPU parameters only"),
            }
        };
        Ok((get(0)?, get(1)?, get(2)?))
    }
}

/// Index of the first unit of each block in the plan (the stem is unit 0).
fn block_starts(units_per_block: &[usize], downsampled: &[bool]) -> Vec<usize> {
    let mut next = 1;
    units_per_block
        .iter()
        .zip(downsampled)
        .map(|(&n, &ds)| {
            let start = next;
            next += n + usize::from(ds);
            start
        })
        .collect()
}

impl BackboneOp {
    fn block_starts(&self) -> Vec<usize> {
        block_starts(&self.units_per_block, &self.downsampled)
    }

    /// Conv (+ BatchNorm with its statistics) of unit `i` on `x`: `(pre_bn, geom,
    /// stats)`; batch statistics are recorded.
    fn conv_stats(
        &self,
        params: &ParamData,
        i: usize,
        x: &Act,
        stats_out: &mut [Option<Stats>],
    ) -> Result<(Vec<f32>, Geom, Stats)> {
        let p = &self.plan[i];
        let (w, _, _) = params.unit(i)?;
        let geom = Geom::new(&x.dims, p.weight.dims(), p.stride, p.pad)?;
        let pass = if p.fixed.is_some() {
            Pass::Inference
        } else {
            Pass::Training
        };
        let pre_bn = conv::forward_then(&x.data, w, &geom, pass, None);
        let stats = if let Some(s) = &p.fixed {
            s.clone()
        } else {
            let s = bn::batch_stats(&pre_bn, geom.out_dims().2, p.eps)?;
            stats_out[i] = Some(s.clone());
            s
        };
        Ok((pre_bn, geom, stats))
    }

    /// Conv → BatchNorm → ReLU of unit `i` on `x` in one go when the unit normalises
    /// with fixed statistics (frozen or eval mode) — no gradient follows, so the
    /// inference algorithms apply and the BatchNorm rides on the conv's output pass;
    /// `None` for a unit that uses batch statistics.
    fn fixed_unit_relu(&self, params: &ParamData, i: usize, x: &Act) -> Result<Option<Act>> {
        let p = &self.plan[i];
        let Some(stats) = &p.fixed else {
            return Ok(None);
        };
        let (w, gamma, beta) = params.unit(i)?;
        let geom = Geom::new(&x.dims, p.weight.dims(), p.stride, p.pad)?;
        let (scale, shift) = stats.affine(gamma, beta);
        let then = Affine {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        let y = conv::forward_then(&x.data, w, &geom, Pass::Inference, Some(&then));
        let (oh, ow, k) = geom.out_dims();
        Ok(Some(Act::new(y, [x.dims[0], oh, ow, k])))
    }

    /// The forward pass on NCHW image data: `(pooled (N·C), dims)`; with `record`,
    /// the tape for the backward pass is kept.
    fn forward(&self, images: &[f32], dims: &[usize], record: bool) -> Result<(Vec<f32>, Shape)> {
        let &[n, c, h, w] = dims else {
            candle_core::bail!("backbone: expected (N, 3, H, W) images, got {dims:?}")
        };
        let params = ParamData::new(&self.plan);
        let mut stats_out: Vec<Option<Stats>> = vec![None; self.plan.len()];
        // (N, C, H·W) → (N, H·W, C): one transpose per image.
        let x = Act::new(conv::transpose_blocks(images, c, h * w), [n, h, w, c]);

        // Stem: conv → BatchNorm → ReLU → 3×3/2 max-pool.
        let (y, stem_tape) = if let Some(y) = self.fixed_unit_relu(&params, 0, &x)? {
            (y, None)
        } else {
            let (pre_bn, geom, stats) = self.conv_stats(&params, 0, &x, &mut stats_out)?;
            let (_, gamma, beta) = params.unit(0)?;
            let (scale, shift) = stats.affine(gamma, beta);
            let (oh, ow, k) = geom.out_dims();
            let mut y = vec![0f32; pre_bn.len()];
            bn::apply(&pre_bn, &scale, &shift, true, &mut y);
            let tape = record.then_some(UnitTape {
                input: x,
                pre_bn,
                geom,
                stats,
            });
            (Act::new(y, [n, oh, ow, k]), tape)
        };
        let (pooled, pool_arg, pool_dims) = max_pool_forward(&y.data, y.dims);
        drop(y);
        let mut cur = Act::new(pooled, pool_dims);

        let starts = self.block_starts();
        let mut block_tapes = Vec::with_capacity(starts.len());
        for (b, &start) in starts.iter().enumerate() {
            let keep = record && self.trainable_blocks[b];
            let (out, tape) = self.block_forward(&params, b, start, &cur, keep, &mut stats_out)?;
            block_tapes.push(tape);
            cur = out;
        }
        let [n, fh, fw, fc] = cur.dims;
        let pooled = global_average(&cur.data, cur.dims);
        if record {
            *lock(&self.tape) = Some(Tape {
                stem: stem_tape,
                pool_arg,
                pool_dims,
                blocks: block_tapes,
                features: [n, fh, fw, fc],
            });
        }
        *lock(&self.batch_stats) = stats_out;
        Ok((pooled, Shape::from((n, fc))))
    }

    /// One residual block; `keep` records its tape.
    fn block_forward(
        &self,
        params: &ParamData,
        b: usize,
        start: usize,
        x: &Act,
        keep: bool,
        stats_out: &mut [Option<Stats>],
    ) -> Result<(Act, Option<BlockTape>)> {
        let count = self.units_per_block[b];
        let mut tapes = Vec::with_capacity(count);
        let mut cur = x.clone();
        for i in start..start + count - 1 {
            if let Some(y) = self.fixed_unit_relu(params, i, &cur)? {
                cur = y;
                continue;
            }
            let (mut pre_bn, geom, stats) = self.conv_stats(params, i, &cur, stats_out)?;
            let (_, gamma, beta) = params.unit(i)?;
            let (scale, shift) = stats.affine(gamma, beta);
            let (oh, ow, k) = geom.out_dims();
            let dims = [cur.dims[0], oh, ow, k];
            let next = if keep {
                let mut y = vec![0f32; pre_bn.len()];
                bn::apply(&pre_bn, &scale, &shift, true, &mut y);
                tapes.push(UnitTape {
                    input: cur,
                    pre_bn,
                    geom,
                    stats,
                });
                y
            } else {
                bn::apply_in_place(&mut pre_bn, &scale, &shift, true);
                pre_bn
            };
            cur = Act::new(next, dims);
        }
        // Last conv + BatchNorm, the shortcut and the ReLU of their sum: one pass.
        let last = start + count - 1;
        let (pre_bn, geom, stats) = self.conv_stats(params, last, &cur, stats_out)?;
        let (_, gamma, beta) = params.unit(last)?;
        let main = stats.affine(gamma, beta);
        let (oh, ow, k) = geom.out_dims();
        let dims = [cur.dims[0], oh, ow, k];
        let ds = if self.downsampled[b] {
            let i = last + 1;
            let (ds_pre, ds_geom, ds_stats) = self.conv_stats(params, i, x, stats_out)?;
            let (_, g, be) = params.unit(i)?;
            let affine = ds_stats.affine(g, be);
            Some((ds_pre, ds_geom, ds_stats, affine))
        } else {
            None
        };
        let shortcut = match &ds {
            Some((pre, _, _, (sc, sh))) => Shortcut::Normalised(pre, sc, sh),
            None => Shortcut::Identity(&x.data),
        };
        // In place on the conv output unless the tape keeps it.
        let (pre_bn, out) = if keep {
            let mut out = pre_bn.clone();
            residual_relu(&mut out, &main.0, &main.1, &shortcut);
            (pre_bn, out)
        } else {
            let mut out = pre_bn;
            residual_relu(&mut out, &main.0, &main.1, &shortcut);
            (Vec::new(), out)
        };
        let out = Act::new(out, dims);
        let tape = keep.then(|| {
            tapes.push(UnitTape {
                input: cur,
                pre_bn,
                geom,
                stats,
            });
            BlockTape {
                units: tapes,
                downsample: ds.map(|(pre_bn, geom, stats, _)| UnitTape {
                    input: x.clone(),
                    pre_bn,
                    geom,
                    stats,
                }),
                output: out.clone(),
            }
        });
        Ok((out, tape))
    }

    /// The backward pass from the pooled features' gradient: the gradient of the
    /// trainable parameters, concatenated in the order of the op's second operand.
    fn backward(&self, tape: &Tape, grad: &[f32], flat_len: usize) -> Result<Vec<f32>> {
        let params = ParamData::new(&self.plan);
        // Offset of each trainable unit's (weight, gamma, beta) in the flat gradient.
        let mut offsets = vec![None; self.plan.len()];
        let mut next = 0;
        for (i, p) in self.plan.iter().enumerate() {
            if p.fixed.is_none() {
                offsets[i] = Some(next);
                next += p.weight.elem_count() + p.gamma.elem_count() + p.beta.elem_count();
            }
        }
        if next != flat_len {
            candle_core::bail!("backbone: {flat_len} parameter gradients expected, plan has {next}")
        }
        let mut flat = vec![0f32; flat_len];
        let mut put = |i: usize, dw: &[f32], dgamma: &[f32], dbeta: &[f32]| {
            if let Some(o) = offsets[i] {
                flat[o..o + dw.len()].copy_from_slice(dw);
                let o = o + dw.len();
                flat[o..o + dgamma.len()].copy_from_slice(dgamma);
                let o = o + dgamma.len();
                flat[o..o + dbeta.len()].copy_from_slice(dbeta);
            }
        };
        let starts = self.block_starts();
        let first_trainable = self.trainable_blocks.iter().position(|&t| t);
        let mut g = global_average_backward(grad, tape.features);
        for (b, block) in tape.blocks.iter().enumerate().rev() {
            let Some(block) = block else { break };
            // The gradient is needed below this block only if something there trains.
            let need_dx = b > 0 && first_trainable.is_some_and(|f| f < b)
                || b == 0 && self.plan[0].fixed.is_none();
            let dx = Self::block_backward(&params, block, starts[b], g, need_dx, &mut put)?;
            match dx {
                Some(dx) => g = dx,
                None => return Ok(flat),
            }
        }
        // The stem (it trains, or the loop above returned).
        let Some(stem) = &tape.stem else {
            return Ok(flat);
        };
        let dy = max_pool_backward(&g, &tape.pool_arg, tape.pool_dims, stem.geom.out_dims());
        let (w, gamma, beta) = params.unit(0)?;
        let bg = bn::backward(
            &stem.pre_bn,
            &dy,
            &stem.stats,
            (gamma, beta),
            true,
            true,
            true,
        );
        let (_, dw) = conv::backward(&stem.input.data, w, &bg.dx, &stem.geom, false, true);
        put(0, &weight_grad(dw)?, &bg.dgamma, &bg.dbeta);
        Ok(flat)
    }

    /// One block's backward from its output gradient `g`: `Some(dx)` when `need_dx`.
    fn block_backward(
        params: &ParamData,
        block: &BlockTape,
        start: usize,
        mut g: Vec<f32>,
        need_dx: bool,
        put: &mut impl FnMut(usize, &[f32], &[f32], &[f32]),
    ) -> Result<Option<Vec<f32>>> {
        // Through the final ReLU: g is then the gradient of both summands.
        relu_mask(&mut g, &block.output.data);
        let mut dy = g.clone();
        let last = block.units.len() - 1;
        let mut dx_main = None;
        for (j, t) in block.units.iter().enumerate().rev() {
            let i = start + j;
            let (w, gamma, beta) = params.unit(i)?;
            let bg = bn::backward(
                &t.pre_bn,
                &dy,
                &t.stats,
                (gamma, beta),
                j != last,
                true,
                true,
            );
            let want_dx = j > 0 || need_dx;
            let (dx, dw) = conv::backward(&t.input.data, w, &bg.dx, &t.geom, want_dx, true);
            put(i, &weight_grad(dw)?, &bg.dgamma, &bg.dbeta);
            match dx {
                Some(dx) if j > 0 => dy = dx,
                dx => dx_main = dx,
            }
        }
        let Some(mut dx) = dx_main.filter(|_| need_dx) else {
            if let Some(t) = &block.downsample {
                // The projection's parameters still need their gradient.
                let i = start + block.units.len();
                let (w, gamma, beta) = params.unit(i)?;
                let bg = bn::backward(&t.pre_bn, &g, &t.stats, (gamma, beta), false, true, true);
                let (_, dw) = conv::backward(&t.input.data, w, &bg.dx, &t.geom, false, true);
                put(i, &weight_grad(dw)?, &bg.dgamma, &bg.dbeta);
            }
            return Ok(None);
        };
        match &block.downsample {
            Some(t) => {
                let i = start + block.units.len();
                let (w, gamma, beta) = params.unit(i)?;
                let bg = bn::backward(&t.pre_bn, &g, &t.stats, (gamma, beta), false, true, true);
                let (dxs, dw) = conv::backward(&t.input.data, w, &bg.dx, &t.geom, true, true);
                put(i, &weight_grad(dw)?, &bg.dgamma, &bg.dbeta);
                if let Some(dxs) = dxs {
                    add_assign(&mut dx, &dxs);
                }
            }
            None => add_assign(&mut dx, &g),
        }
        Ok(Some(dx))
    }
}

impl CustomOp2 for BackboneOp {
    fn name(&self) -> &'static str {
        "resnet-backbone"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (pooled, shape) = self.forward(contiguous_f32(s1, l1)?, l1.dims(), true)?;
        Ok((CpuStorage::F32(pooled), shape))
    }

    fn bwd(
        &self,
        _images: &Tensor,
        flat: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The tape stays with the graph (like Candle's own saved tensors), so a second
        // `backward` on the same loss works too.
        let guard = lock(&self.tape);
        let Some(tape) = guard.as_ref() else {
            candle_core::bail!("backbone: backward without a training forward")
        };
        let grad = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let dflat = self.backward(tape, &grad, flat.elem_count())?;
        drop(guard);
        Ok((
            None,
            Some(Tensor::from_vec(dflat, flat.shape(), flat.device())?),
        ))
    }
}

/// The kernel gradient `conv::backward` was asked for.
fn weight_grad(dw: Option<Vec<f32>>) -> Result<Vec<f32>> {
    dw.ok_or_else(|| {
        candle_core::Error::Msg("backbone: conv backward gave no kernel gradient".into())
    })
}

/// 3×3, stride-2, padding-1 max-pool of `(N, H, W, C)`: `(out, tap of each maximum,
/// out dims)`; the first maximum in window order wins (torch's rule).
fn max_pool_forward(x: &[f32], [n, h, w, c]: [usize; 4]) -> (Vec<f32>, Vec<u8>, [usize; 4]) {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0f32; n * oh * ow * c];
    let mut arg = vec![0u8; out.len()];
    out.par_chunks_mut(ow * c)
        .zip(arg.par_chunks_mut(ow * c))
        .enumerate()
        .for_each(|(row, (orow, arow))| {
            vectorized(
                #[inline(always)]
                || {
                    let (ni, r) = (row / oh, row % oh);
                    for q in 0..ow {
                        let (o, a) = (&mut orow[q * c..][..c], &mut arow[q * c..][..c]);
                        o.fill(f32::NEG_INFINITY);
                        for t in 0..9u8 {
                            let (ih, iw) = (
                                (2 * r + usize::from(t / 3)).wrapping_sub(1),
                                (2 * q + usize::from(t % 3)).wrapping_sub(1),
                            );
                            if ih >= h || iw >= w {
                                continue;
                            }
                            let src = &x[((ni * h + ih) * w + iw) * c..][..c];
                            for ((ov, av), &v) in o.iter_mut().zip(a.iter_mut()).zip(src) {
                                // Selects, not a branch: the loop vectorises.
                                let gt = v > *ov;
                                *ov = if gt { v } else { *ov };
                                *av = if gt { t } else { *av };
                            }
                        }
                    }
                },
            );
        });
    (out, arg, [n, oh, ow, c])
}

/// Backward of [`max_pool_forward`]: each output's gradient to its maximum's input.
fn max_pool_backward(
    g: &[f32],
    arg: &[u8],
    [n, oh, ow, c]: [usize; 4],
    (h, w, _): (usize, usize, usize),
) -> Vec<f32> {
    let mut dx = vec![0f32; n * h * w * c];
    // One image per task: windows overlap between neighbouring outputs.
    dx.par_chunks_mut(h * w * c)
        .enumerate()
        .for_each(|(ni, img)| {
            vectorized(
                #[inline(always)]
                || {
                    for r in 0..oh {
                        for q in 0..ow {
                            let base = ((ni * oh + r) * ow + q) * c;
                            for ci in 0..c {
                                let t = arg[base + ci];
                                let ih = 2 * r + usize::from(t / 3) - 1;
                                let iw = 2 * q + usize::from(t % 3) - 1;
                                img[(ih * w + iw) * c + ci] += g[base + ci];
                            }
                        }
                    }
                },
            );
        });
    dx
}

/// The shortcut of a residual sum.
enum Shortcut<'a> {
    Identity(&'a [f32]),
    /// A projection's conv output with its BatchNorm's `(scale, shift)`.
    Normalised(&'a [f32], &'a [f32], &'a [f32]),
}

/// `a ← max(0, a·scale + shift + shortcut)` per channel.
fn residual_relu(a: &mut [f32], scale: &[f32], shift: &[f32], s: &Shortcut) {
    let c = scale.len();
    let rows = 256 * c;
    a.par_chunks_mut(rows).enumerate().for_each(|(t, ac)| {
        vectorized(
            #[inline(always)]
            || {
                let off = t * rows;
                for (r, arow) in ac.chunks_exact_mut(c).enumerate() {
                    let at = off + r * c;
                    match s {
                        Shortcut::Identity(x) => {
                            let x = &x[at..at + c];
                            for (((v, &sc), &sh), &xv) in
                                arow.iter_mut().zip(scale).zip(shift).zip(x)
                            {
                                *v = (*v * sc + sh + xv).max(0.0);
                            }
                        }
                        Shortcut::Normalised(d, dsc, dsh) => {
                            let d = &d[at..at + c];
                            let main = arow.iter_mut().zip(scale).zip(shift);
                            let side = d.iter().zip(*dsc).zip(*dsh);
                            for (((v, &sc), &sh), ((&dv, &a2), &b2)) in main.zip(side) {
                                *v = (*v * sc + sh + (dv * a2 + b2)).max(0.0);
                            }
                        }
                    }
                }
            },
        );
    });
}

/// Zeroes `g` where the ReLU's output was 0.
fn relu_mask(g: &mut [f32], out: &[f32]) {
    // A select, not a branch: it vectorises.
    zip_apply(g, out, |gv, o| *gv = if o > 0.0 { *gv } else { 0.0 });
}

fn add_assign(a: &mut [f32], b: &[f32]) {
    zip_apply(a, b, |x, y| *x += y);
}

/// `f(a[i], b[i])` for every element, in parallel and vectorised.
fn zip_apply(a: &mut [f32], b: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    a.par_chunks_mut(1 << 14)
        .zip(b.par_chunks(1 << 14))
        .for_each(|(ac, bc)| {
            vectorized(
                #[inline(always)]
                || {
                    for (x, &y) in ac.iter_mut().zip(bc) {
                        f(x, y);
                    }
                },
            );
        });
}

/// Mean over the pixels of `(N, H, W, C)`: `(N, C)`.
fn global_average(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let p = h * w;
    let mut out = vec![0f32; n * c];
    out.par_chunks_mut(c).enumerate().for_each(|(ni, o)| {
        vectorized(
            #[inline(always)]
            || {
                let mut acc = vec![0f64; c];
                for px in x[ni * p * c..(ni + 1) * p * c].chunks_exact(c) {
                    for (a, &v) in acc.iter_mut().zip(px) {
                        *a += f64::from(v);
                    }
                }
                for (ov, a) in o.iter_mut().zip(acc) {
                    *ov = (a / p as f64) as f32;
                }
            },
        );
    });
    out
}

/// Backward of [`global_average`]: `g (N, C)` spread over the pixels.
fn global_average_backward(g: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let p = h * w;
    let mut out = vec![0f32; n * p * c];
    out.par_chunks_mut(p * c).enumerate().for_each(|(ni, img)| {
        vectorized(
            #[inline(always)]
            || {
                let gi = &g[ni * c..(ni + 1) * c];
                for px in img.chunks_exact_mut(c) {
                    for (o, &v) in px.iter_mut().zip(gi) {
                        *o = v / p as f32;
                    }
                }
            },
        );
    });
    out
}
