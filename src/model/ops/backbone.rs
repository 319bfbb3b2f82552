//! The ResNet backbone's forward and backward on the CPU as one custom op, outside
//! Candle's autograd.
//!
//! Candle's autograd charges every node a zero-filled gradient buffer and an add
//! (`GradStore::or_insert` + `add`), runs a ReLU's backward as three ops and the
//! residual sum as two accumulations, and allocates every intermediate afresh; for
//! ResNet50 at 128 px that was about a third of a training step.
//! [`ResNet::forward_pooled`] runs the whole backbone — conv, BatchNorm, ReLU,
//! residual sums, the stem's max-pool and the global (average or generalised-mean)
//! pool — as one `CustomOp2` whose second operand is the concatenation of the
//! trainable parameters: Candle's `cat` backward hands each parameter its slice of
//! the op's gradient, so `loss.backward()` and the optimizer work unchanged. A training step uses
//! [`ResNet::forward_pooled_deferred`] instead, which skips that concatenation and
//! hands the same gradients over after the backward pass ([`DeferredGrads`]).
//! Activations are channels-last; the math is `vitrine_kernels`' (conv, norm, pool,
//! elementwise); the last BatchNorm of a block, the shortcut's BatchNorm, the residual
//! sum and its ReLU are a single pass. Inference in bf16 (`model.precision`) keeps the
//! activations bf16 between layers, each conv applying its BatchNorm, shortcut and
//! ReLU before rounding (`vitrine_kernels::conv::forward_bf16`).
//!
//! The op walks the network's own layers ([`ResNet`] is the one description of the
//! network): the stem, then each block's convs and its projection shortcut, in that
//! order. It computes the same function as the per-op path (`ResNet::forward_in`,
//! checked by the tests, gradients included), with torch's max-pool tie rule (the
//! first maximum gets the gradient).

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::backprop::GradStore;
use candle_core::{
    CpuStorage, CustomOp2, DType, Layout, ModuleT, Result, Shape, Storage, Tensor, Var,
};
use candle_nn::{BatchNorm, Conv2d};
use vitrine_kernels::buffer;
use vitrine_kernels::conv::{self, Epilogue, Forward, Geom, Grads, Precision, Wanted};
use vitrine_kernels::elementwise::{
    Affine, Shortcut, add_assign, apply, apply_in_place, relu_mask, residual_relu,
    residual_relu_to, transpose_blocks,
};
use vitrine_kernels::norm::{self, BackwardFlags, Stats};
use vitrine_kernels::pool::{self, MaxPool};

use super::batch_norm::{running_stats, update_running_stats};
use super::tensor::contiguous_f32;
use super::{kernel_error, threads};
use crate::model::resnet::{Channels, ResNet, STEM_STAGE, generalized_mean};

/// A conv and the BatchNorm after it, borrowed from the network, and whether they
/// train in this pass.
struct Unit<'a> {
    conv: &'a Conv2d,
    bn: &'a BatchNorm,
    trains: bool,
}

/// How a residual block's units sit in the op's list of units.
#[derive(Debug, Clone, Copy)]
struct BlockShape {
    /// Convs on the main path (then, with `projection`, the shortcut's conv).
    convs: usize,
    /// Whether the shortcut is a projection (conv + BatchNorm) rather than identity.
    projection: bool,
    /// Whether the block's stage trains.
    trains: bool,
}

/// The network's units in the op's order — the stem, then each block's convs and
/// its projection shortcut — and the shape of each block.
fn walk(net: &ResNet) -> (Vec<Unit<'_>>, Vec<BlockShape>) {
    let stem = net.stem();
    let mut units = vec![Unit {
        conv: &stem.conv1,
        bn: &stem.bn1,
        trains: !net.is_frozen(STEM_STAGE),
    }];
    let mut blocks = Vec::new();
    for (i, layer) in net.layers().iter().enumerate() {
        let trains = !net.is_frozen(STEM_STAGE + 1 + i);
        for b in layer {
            units.extend(
                b.convs
                    .iter()
                    .zip(&b.bns)
                    .map(|(conv, bn)| Unit { conv, bn, trains }),
            );
            units.extend(b.downsample.iter().map(|d| Unit {
                conv: &d.conv,
                bn: &d.bn,
                trains,
            }));
            blocks.push(BlockShape {
                convs: b.convs.len(),
                projection: b.downsample.is_some(),
                trains,
            });
        }
    }
    (units, blocks)
}

impl ResNet {
    /// Globally pooled features `(N, feature_dim)` of images `xs (N, 3, H, W)` (the
    /// average, or the generalised mean with `gem_p`): on the CPU in f32 the whole
    /// backbone as one op (module docs), elsewhere [`ModuleT::forward_t`] +
    /// [`generalized_mean`].
    ///
    /// In train mode, trainable stages use batch statistics (their running statistics
    /// are updated) and the result carries the gradient of every trainable parameter;
    /// frozen stages and eval mode use the running statistics.
    pub fn forward_pooled(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if Channels::fastest_for(xs) == Channels::Last && xs.rank() == 4 {
            pooled_features(self, xs, train, None)
        } else {
            self.refuse_bf16(xs)?;
            generalized_mean(&self.forward_t(xs, train)?, self.config().gem_p)
        }
    }

    /// Candle's kernels (another device, or `VITRINE_CANDLE_CONV=1`) have no bf16
    /// path: an error rather than silently f32.
    fn refuse_bf16(&self, xs: &Tensor) -> Result<()> {
        if self.config().precision == super::super::resnet::Precision::Bf16 {
            candle_core::bail!(
                "model.precision = \"bf16\" runs on vitrine's CPU kernels only (device {:?}{}); use \"fp32\"",
                xs.device(),
                if xs.device().is_cpu() {
                    ", VITRINE_CANDLE_CONV=1"
                } else {
                    ""
                }
            )
        }
        Ok(())
    }

    /// [`Self::forward_pooled`] in train mode for one training step, with the
    /// backbone's parameter gradients kept out of Candle's graph: after
    /// `loss.backward()`, [`DeferredGrads::add_to`] puts them into the gradient store.
    /// The same numbers as `forward_pooled`'s path, without its cost: that path
    /// concatenates every trainable parameter into the op's second operand (a copy
    /// of all of them), and Candle's backward of the concatenation then zero-fills
    /// and adds two gradient buffers per parameter — serial passes over ~100 MB for
    /// ResNet50, 4–10% of a step.
    pub fn forward_pooled_deferred(&self, xs: &Tensor) -> Result<(Tensor, DeferredGrads)> {
        let deferred = DeferredGrads::default();
        let pooled = if Channels::fastest_for(xs) == Channels::Last && xs.rank() == 4 {
            pooled_features(self, xs, true, Some(&deferred))?
        } else {
            self.refuse_bf16(xs)?;
            generalized_mean(&self.forward_t(xs, true)?, self.config().gem_p)?
        };
        Ok((pooled, deferred))
    }
}

/// The backbone's parameter gradients of one [`ResNet::forward_pooled_deferred`],
/// filled by the backward pass (empty when the pass ran through Candle's graph).
#[derive(Debug, Clone, Default)]
pub struct DeferredGrads {
    slot: Arc<Mutex<Vec<ParamGrad>>>,
}

/// A parameter and its gradient's values.
type ParamGrad = (Tensor, Vec<f32>);

impl DeferredGrads {
    /// Adds the gradients the backward pass left here to `grads` (to what a
    /// parameter already has there, if anything), leaving this empty.
    pub fn add_to(&self, grads: &mut GradStore) -> Result<()> {
        for (param, g) in std::mem::take(&mut *lock(&self.slot)) {
            let g = Tensor::from_vec(g, param.shape(), param.device())?;
            let g = match grads.remove(&param) {
                Some(before) => (before + g)?,
                None => g,
            };
            grads.insert(&param, g);
        }
        Ok(())
    }
}

/// [`ResNet::forward_pooled`] on the CPU (f32).
fn pooled_features(
    net: &ResNet,
    xs: &Tensor,
    train: bool,
    deferred: Option<&DeferredGrads>,
) -> Result<Tensor> {
    let (units, blocks) = walk(net);
    let plan: Vec<UnitPlan> = units
        .iter()
        .map(|u| {
            let batch = train && u.trains;
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
                fixed: (!batch).then(|| running_stats(u.bn)).transpose()?,
            })
        })
        .collect::<Result<_>>()?;
    let trains = train && units.iter().any(|u| u.trains);
    let op = BackboneOp {
        blocks,
        plan,
        gem_p: net.config().gem_p,
        threads: threads(),
        precision: net.config().precision.kernel(),
        tape: Arc::new(Mutex::new(None)),
        batch_stats: Arc::new(Mutex::new(Vec::new())),
        deferred: deferred.cloned(),
    };
    let batch_stats = Arc::clone(&op.batch_stats);
    let xs = xs.contiguous()?;
    let out = if !trains {
        let (data, shape) = {
            let (s, l) = xs.storage_and_layout();
            let Storage::Cpu(s) = &*s else {
                candle_core::bail!("backbone: CPU tensors only")
            };
            op.forward(contiguous_f32(s, l)?, xs.dims(), false)?
        };
        Tensor::from_vec(data, shape, xs.device())?
    } else if deferred.is_some() {
        // Only for Candle to call the op's backward: a fresh variable of one element.
        xs.apply_op2(Var::zeros(1, DType::F32, xs.device())?.as_tensor(), op)?
    } else {
        let trainable: Vec<Tensor> = op
            .plan
            .iter()
            .filter(|p| p.fixed.is_none())
            .flat_map(|p| [&p.weight, &p.gamma, &p.beta])
            .map(Tensor::flatten_all)
            .collect::<Result<_>>()?;
        xs.apply_op2(&Tensor::cat(&trainable, 0)?, op)?
    };
    let stats = std::mem::take(&mut *lock(&batch_stats));
    for (u, s) in units.iter().zip(stats) {
        if let Some(s) = s {
            update_running_stats(u.bn, &s)?;
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

/// A channels-last activation `(N, H, W, C)` in bf16 bits (inference in bf16).
#[derive(Debug, Clone)]
struct Bits {
    data: Vec<u16>,
    dims: [usize; 4],
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
    /// The stem's max-pool: the tap of each output's maximum and the pooled dims
    /// (its output, already consumed, is left empty).
    pool: MaxPool,
    blocks: Vec<Option<BlockTape>>,
    /// Dims of the last feature map (before global pooling).
    features: [usize; 4],
    /// With a generalised-mean pool, what its backward needs: the last feature map
    /// and the pooled output.
    gem: Option<(Act, Vec<f32>)>,
}

/// The op: `(images (N, 3, H, W), trainable parameters concatenated)` → `(N, C)`.
struct BackboneOp {
    /// Each residual block, in order.
    blocks: Vec<BlockShape>,
    /// Units in forward order: stem, then each block's convs and its downsample.
    plan: Vec<UnitPlan>,
    /// Exponent of the global generalised-mean pool (1: the average).
    gem_p: f32,
    /// Threads the conv GEMMs are split over.
    threads: usize,
    /// What the forward convs multiply (the gradients are f32).
    precision: Precision,
    tape: Arc<Mutex<Option<Tape>>>,
    /// Batch statistics of the units that used them (train mode), in plan order.
    batch_stats: Arc<Mutex<Vec<Option<Stats>>>>,
    /// Where the backward pass leaves the parameter gradients instead of returning
    /// them as the second operand's (whose value is then a placeholder).
    deferred: Option<DeferredGrads>,
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

impl BackboneOp {
    /// Index of the first unit of each block in the plan (the stem is unit 0).
    fn block_starts(&self) -> Vec<usize> {
        let mut next = 1;
        self.blocks
            .iter()
            .map(|b| {
                let start = next;
                next += b.convs + usize::from(b.projection);
                start
            })
            .collect()
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
        let geom = Geom::new(&x.dims, p.weight.dims(), p.stride, p.pad).map_err(kernel_error)?;
        let how = Forward {
            precision: self.precision,
            ..Forward::plain(self.threads)
        };
        let pre_bn = conv::forward(&x.data, w, &geom, how);
        let stats = if let Some(s) = &p.fixed {
            s.clone()
        } else {
            let s = norm::batch_stats(&pre_bn, geom.out_dims().2, p.eps).map_err(kernel_error)?;
            stats_out[i] = Some(s.clone());
            s
        };
        Ok((pre_bn, geom, stats))
    }

    /// Conv → BatchNorm → ReLU of unit `i` on `x` in one go when the unit normalises
    /// with fixed statistics (frozen or eval mode) — no gradient follows, so the
    /// BatchNorm rides on the conv's output pass; `None` for a unit that uses batch
    /// statistics.
    fn fixed_unit_relu(&self, params: &ParamData, i: usize, x: &Act) -> Result<Option<Act>> {
        let Some((w, geom, (scale, shift))) = self.fixed_conv(params, i, x)? else {
            return Ok(None);
        };
        let then = bn_relu(&scale, &shift);
        let how = Forward {
            then: Some(&then),
            shortcut: None,
            threads: self.threads,
            precision: self.precision,
        };
        let y = conv::forward(&x.data, w, &geom, how);
        let (oh, ow, k) = geom.out_dims();
        Ok(Some(Act::new(y, [x.dims[0], oh, ow, k])))
    }

    /// `(weight, geom, (scale, shift))` of unit `i` on `input` when it normalises with
    /// fixed statistics (frozen or eval mode); `None` when it uses batch statistics.
    fn fixed_conv<'p>(
        &self,
        params: &'p ParamData,
        i: usize,
        input: &Act,
    ) -> Result<Option<FixedConv<'p>>> {
        let p = &self.plan[i];
        let Some(stats) = &p.fixed else {
            return Ok(None);
        };
        let (w, gamma, beta) = params.unit(i)?;
        let geom =
            Geom::new(&input.dims, p.weight.dims(), p.stride, p.pad).map_err(kernel_error)?;
        Ok(Some((w, geom, stats.affine(gamma, beta))))
    }

    /// The end of block `b` — its last conv (unit `last`, on `cur`), BatchNorm, the
    /// shortcut from the block's input `x` and the ReLU — in the conv's own output
    /// pass, when those units normalise with fixed statistics; `None` otherwise.
    fn fixed_residual_end(
        &self,
        params: &ParamData,
        b: usize,
        last: usize,
        x: &Act,
        cur: &Act,
    ) -> Result<Option<Act>> {
        let Some((w, geom, (scale, shift))) = self.fixed_conv(params, last, cur)? else {
            return Ok(None);
        };
        let ds = if self.blocks[b].projection {
            let Some((dw, dgeom, affine)) = self.fixed_conv(params, last + 1, x)? else {
                return Ok(None);
            };
            let how = Forward {
                precision: self.precision,
                ..Forward::plain(self.threads)
            };
            let pre = conv::forward(&x.data, dw, &dgeom, how);
            Some((pre, affine))
        } else {
            None
        };
        let shortcut = match &ds {
            Some((pre, (sc, sh))) => Shortcut::Normalised(pre, sc, sh),
            None => Shortcut::Identity(&x.data),
        };
        let then = bn_relu(&scale, &shift);
        let how = Forward {
            then: Some(&then),
            shortcut: Some(&shortcut),
            threads: self.threads,
            precision: self.precision,
        };
        let y = conv::forward(&cur.data, w, &geom, how);
        let (oh, ow, k) = geom.out_dims();
        Ok(Some(Act::new(y, [cur.dims[0], oh, ow, k])))
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
        let x = transpose_blocks(images, c, h * w);
        if !record
            && self.precision == Precision::Bf16
            && self.plan.iter().all(|p| p.fixed.is_some())
        {
            *lock(&self.batch_stats) = stats_out;
            return self.forward_bf16(&params, &x, [n, h, w, c]);
        }
        let x = Act::new(x, [n, h, w, c]);

        // Stem: conv → BatchNorm → ReLU → 3×3/2 max-pool.
        let (y, stem_tape) = if let Some(y) = self.fixed_unit_relu(&params, 0, &x)? {
            (y, None)
        } else {
            let (pre_bn, geom, stats) = self.conv_stats(&params, 0, &x, &mut stats_out)?;
            let (_, gamma, beta) = params.unit(0)?;
            let (scale, shift) = stats.affine(gamma, beta);
            let (oh, ow, k) = geom.out_dims();
            let y = apply(&pre_bn, &bn_relu(&scale, &shift));
            let tape = record.then_some(UnitTape {
                input: x,
                pre_bn,
                geom,
                stats,
            });
            (Act::new(y, [n, oh, ow, k]), tape)
        };
        let pool = pool::max_pool_3x3_s2(&y.data, y.dims);
        drop(y);
        let mut cur = Act::new(pool.out, pool.dims);
        let pool = MaxPool {
            out: Vec::new(),
            ..pool
        };

        let starts = self.block_starts();
        let mut block_tapes = Vec::with_capacity(starts.len());
        for (b, &start) in starts.iter().enumerate() {
            let keep = record && self.blocks[b].trains;
            let (out, tape) = self.block_forward(&params, b, start, &cur, keep, &mut stats_out)?;
            block_tapes.push(tape);
            cur = out;
        }
        let [n, fh, fw, fc] = cur.dims;
        let pooled = pool::generalized_mean(&cur.data, cur.dims, self.gem_p);
        if record {
            *lock(&self.tape) = Some(Tape {
                stem: stem_tape,
                pool,
                blocks: block_tapes,
                features: [n, fh, fw, fc],
                gem: (self.gem_p != 1.0).then(|| (cur, pooled.clone())),
            });
        }
        *lock(&self.batch_stats) = stats_out;
        Ok((pooled, Shape::from((n, fc))))
    }

    /// [`Self::forward`] without a tape, every unit normalising with fixed statistics,
    /// in bf16: the activations stay bf16 from layer to layer, each conv's BatchNorm,
    /// shortcut and ReLU applied to its f32 sums before they are rounded
    /// ([`conv::forward_bf16`]).
    fn forward_bf16(
        &self,
        params: &ParamData,
        images: &[f32],
        dims: [usize; 4],
    ) -> Result<(Vec<f32>, Shape)> {
        let x = Bits {
            data: conv::bf16_from_f32(images),
            dims,
        };
        let stem = self.unit_bf16(params, 0, &x, None, true)?;
        drop(x);
        let (data, dims) = pool::max_pool_3x3_s2_bf16(&stem.data, stem.dims);
        drop(stem);
        let mut cur = Bits { data, dims };
        for (b, start) in self.block_starts().into_iter().enumerate() {
            let last = start + self.blocks[b].convs - 1;
            let mut main: Option<Bits> = None;
            for i in start..last {
                main =
                    Some(self.unit_bf16(params, i, main.as_ref().unwrap_or(&cur), None, true)?);
            }
            let main = main.unwrap_or_else(|| cur.clone());
            let shortcut = if self.blocks[b].projection {
                self.unit_bf16(params, last + 1, &cur, None, false)?.data
            } else {
                cur.data
            };
            cur = self.unit_bf16(params, last, &main, Some(&shortcut), true)?;
        }
        let [n, _, _, fc] = cur.dims;
        let features = conv::f32_from_bf16(&cur.data);
        let pooled = pool::generalized_mean(&features, cur.dims, self.gem_p);
        Ok((pooled, Shape::from((n, fc))))
    }

    /// Conv → BatchNorm (fixed statistics) → `+ shortcut` → ReLU (when `relu`) of unit
    /// `i` on bf16 activations.
    fn unit_bf16(
        &self,
        params: &ParamData,
        i: usize,
        x: &Bits,
        shortcut: Option<&[u16]>,
        relu: bool,
    ) -> Result<Bits> {
        let p = &self.plan[i];
        let Some(stats) = &p.fixed else {
            candle_core::bail!("backbone: a bf16 inference unit without fixed statistics")
        };
        let (w, gamma, beta) = params.unit(i)?;
        let geom = Geom::new(&x.dims, p.weight.dims(), p.stride, p.pad).map_err(kernel_error)?;
        let (scale, shift) = stats.affine(gamma, beta);
        let e = Epilogue {
            scale: &scale,
            shift: &shift,
            shortcut,
            relu,
        };
        let data = conv::forward_bf16(&x.data, w, &geom, &e, self.threads);
        let (oh, ow, k) = geom.out_dims();
        Ok(Bits {
            data,
            dims: [x.dims[0], oh, ow, k],
        })
    }

    /// A conv's gradients, their GEMMs in this pass's precision.
    fn conv_backward(&self, x: &[f32], w: &[f32], dy: &[f32], g: &Geom, wanted: Wanted) -> Grads {
        conv::backward_in(x, w, dy, g, wanted, self.threads, self.precision)
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
        let count = self.blocks[b].convs;
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
                let y = apply(&pre_bn, &bn_relu(&scale, &shift));
                tapes.push(UnitTape {
                    input: cur,
                    pre_bn,
                    geom,
                    stats,
                });
                y
            } else {
                apply_in_place(&mut pre_bn, &bn_relu(&scale, &shift));
                pre_bn
            };
            cur = Act::new(next, dims);
        }
        // Last conv + BatchNorm, the shortcut and the ReLU of their sum: one pass.
        let last = start + count - 1;
        if !keep && let Some(out) = self.fixed_residual_end(params, b, last, x, &cur)? {
            return Ok((out, None));
        }
        let (pre_bn, geom, stats) = self.conv_stats(params, last, &cur, stats_out)?;
        let (_, gamma, beta) = params.unit(last)?;
        let main = stats.affine(gamma, beta);
        let (oh, ow, k) = geom.out_dims();
        let dims = [cur.dims[0], oh, ow, k];
        let ds = if self.blocks[b].projection {
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
            let out = residual_relu_to(&pre_bn, &main.0, &main.1, &shortcut);
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
        let grads = self.param_grads(tape, grad)?;
        let pieces: Vec<&[f32]> = grads.iter().map(|(_, g)| g.as_slice()).collect();
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        if len != flat_len {
            candle_core::bail!("backbone: {flat_len} parameter gradients expected, plan has {len}")
        }
        Ok(buffer::concat(&pieces))
    }

    /// Each trainable parameter with its gradient, in the order of the op's second
    /// operand (plan order; weight, gamma, beta of each unit).
    fn param_grads(&self, tape: &Tape, grad: &[f32]) -> Result<Vec<ParamGrad>> {
        let mut grads: Vec<Option<[Vec<f32>; 3]>> = vec![None; self.plan.len()];
        self.unit_grads(tape, grad, &mut |i, dw, dgamma, dbeta| {
            grads[i] = Some([dw, dgamma, dbeta]);
        })?;
        let mut out = Vec::new();
        for (p, g) in self.plan.iter().zip(grads) {
            if p.fixed.is_some() {
                continue;
            }
            let params = [&p.weight, &p.gamma, &p.beta];
            match g {
                Some(g) if g.iter().map(Vec::len).eq(params.map(Tensor::elem_count)) => {
                    out.extend(params.into_iter().cloned().zip(g));
                }
                _ => candle_core::bail!("backbone: a trainable unit got no gradient of its size"),
            }
        }
        Ok(out)
    }

    /// The backward pass from the pooled features' gradient: `put(unit, dw, dgamma,
    /// dbeta)` for each trainable unit, from the last.
    fn unit_grads(
        &self,
        tape: &Tape,
        grad: &[f32],
        put: &mut impl FnMut(usize, Vec<f32>, Vec<f32>, Vec<f32>),
    ) -> Result<()> {
        let params = ParamData::new(&self.plan);
        let starts = self.block_starts();
        let first_trainable = self.blocks.iter().position(|b| b.trains);
        let mut g = match &tape.gem {
            Some((x, y)) => {
                pool::generalized_mean_backward(grad, &x.data, y, tape.features, self.gem_p)
            }
            None => pool::global_average_backward(grad, tape.features),
        };
        for (b, block) in tape.blocks.iter().enumerate().rev() {
            let Some(block) = block else { break };
            // The gradient is needed below this block only if something there trains.
            let need_dx = b > 0 && first_trainable.is_some_and(|f| f < b)
                || b == 0 && self.plan[0].fixed.is_none();
            let dx = self.block_backward(&params, block, starts[b], g, need_dx, put)?;
            match dx {
                Some(dx) => g = dx,
                None => return Ok(()),
            }
        }
        // The stem (it trains, or the loop above returned).
        let Some(stem) = &tape.stem else {
            return Ok(());
        };
        let (stem_h, stem_w, _) = stem.geom.out_dims();
        let dy = pool::max_pool_3x3_s2_backward(&g, &tape.pool, (stem_h, stem_w));
        let (w, gamma, beta) = params.unit(0)?;
        let bg = norm::backward(
            &stem.pre_bn,
            Cow::Owned(dy),
            &stem.stats,
            (gamma, beta),
            TRAINED_RELU,
        );
        let grads = self.conv_backward(&stem.input.data, w, &bg.dx, &stem.geom, ONLY_DW);
        put(0, weight_grad(grads.dw)?, bg.dgamma, bg.dbeta);
        Ok(())
    }

    /// One block's backward from its output gradient `g`: `Some(dx)` when `need_dx`.
    fn block_backward(
        &self,
        params: &ParamData,
        block: &BlockTape,
        start: usize,
        mut g: Vec<f32>,
        need_dx: bool,
        put: &mut impl FnMut(usize, Vec<f32>, Vec<f32>, Vec<f32>),
    ) -> Result<Option<Vec<f32>>> {
        // Through the final ReLU: g is then the gradient of both summands.
        relu_mask(&mut g, &block.output.data);
        // The gradient into each unit's BatchNorm, from the last unit (`g` itself) down.
        let mut dy_below: Option<Vec<f32>> = None;
        let last = block.units.len() - 1;
        let mut dx_main = None;
        for (j, t) in block.units.iter().enumerate().rev() {
            let i = start + j;
            let (w, gamma, beta) = params.unit(i)?;
            let flags = BackwardFlags {
                relu: j != last,
                ..TRAINED_RELU
            };
            // `g` is needed again for the shortcut; a gradient from below is not.
            let dy = dy_below.take().map_or(Cow::Borrowed(&g[..]), Cow::Owned);
            let bg = norm::backward(&t.pre_bn, dy, &t.stats, (gamma, beta), flags);
            let wanted = Wanted {
                dx: j > 0 || need_dx,
                dw: true,
            };
            let grads = self.conv_backward(&t.input.data, w, &bg.dx, &t.geom, wanted);
            put(i, weight_grad(grads.dw)?, bg.dgamma, bg.dbeta);
            match grads.dx {
                Some(dx) if j > 0 => dy_below = Some(dx),
                dx => dx_main = dx,
            }
        }
        // A projection shortcut: its parameters' gradients, and its input's if wanted.
        let shortcut_dx = match &block.downsample {
            Some(t) => {
                let i = start + block.units.len();
                let (w, gamma, beta) = params.unit(i)?;
                let g = Cow::Borrowed(&g[..]);
                let bg = norm::backward(&t.pre_bn, g, &t.stats, (gamma, beta), TRAINED);
                let wanted = Wanted {
                    dx: need_dx,
                    dw: true,
                };
                let grads = self.conv_backward(&t.input.data, w, &bg.dx, &t.geom, wanted);
                put(i, weight_grad(grads.dw)?, bg.dgamma, bg.dbeta);
                grads.dx
            }
            None => None,
        };
        let Some(mut dx) = dx_main.filter(|_| need_dx) else {
            return Ok(None);
        };
        // The identity shortcut passes `g` through unchanged.
        add_assign(&mut dx, shortcut_dx.as_deref().unwrap_or(&g));
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
        if let Some(deferred) = &self.deferred {
            let grads = self.param_grads(tape, &grad)?;
            drop(guard);
            *lock(&deferred.slot) = grads;
            return Ok((None, None));
        }
        let dflat = self.backward(tape, &grad, flat.elem_count())?;
        drop(guard);
        Ok((
            None,
            Some(Tensor::from_vec(dflat, flat.shape(), flat.device())?),
        ))
    }
}

/// The kernel gradient a conv's backward was asked for.
fn weight_grad(dw: Option<Vec<f32>>) -> Result<Vec<f32>> {
    dw.ok_or_else(|| {
        candle_core::Error::Msg("backbone: conv backward gave no kernel gradient".into())
    })
}

/// The BatchNorm of a trained unit: batch statistics, `dx` wanted, no ReLU after it.
const TRAINED: BackwardFlags = BackwardFlags {
    relu: false,
    batch_stats: true,
    need_dx: true,
};

/// [`TRAINED`] with a ReLU after the BatchNorm.
const TRAINED_RELU: BackwardFlags = BackwardFlags {
    relu: true,
    ..TRAINED
};

/// Only the kernel gradient of a conv (nothing below it trains).
const ONLY_DW: Wanted = Wanted {
    dx: false,
    dw: true,
};

/// A unit's weight, geometry and fixed BatchNorm as `(scale, shift)`.
type FixedConv<'p> = (&'p [f32], Geom, (Vec<f32>, Vec<f32>));

/// A BatchNorm with `(scale, shift)` followed by a ReLU.
fn bn_relu<'a>(scale: &'a [f32], shift: &'a [f32]) -> Affine<'a> {
    Affine {
        scale,
        shift,
        relu: true,
    }
}
