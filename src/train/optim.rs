//! AdamW with decoupled weight decay, written out so that its moments can be saved in
//! checkpoints and restored on `--resume` (candle-nn's keeps them private), plus
//! global gradient-norm clipping and the learning-rate schedule.

pub use crate::config::Schedule;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;

use crate::model::ops::tensor::{contiguous_f32, contiguous_f32_mut};
use vitrine_kernels::elementwise::zip_apply;

struct Param {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates applied so far (bias correction).
    pub t: u64,
    /// Whether CPU f32 parameters take the in-place update (off only in tests, to
    /// compare it with the tensor-op one).
    fused_cpu: bool,
}

impl AdamW {
    /// `params`: (name, variable, whether weight decay applies).
    pub fn new(params: Vec<(String, Var, bool)>, weight_decay: f64) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var, decay)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Param {
                    name,
                    var,
                    decay,
                    m,
                    v,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            fused_cpu: true,
        })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let hyper = Hyper {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        };
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            if self.fused_cpu && fused_cpu_step(p, g, hyper, lr, (bc1, bc2))? {
                continue;
            }
            // Detached: gradients carry the backward graph, and moments built from them
            // would keep every past step's graph alive.
            let g = g.detach().to_dtype(DType::F32)?;
            p.m = ((&p.m * self.beta1)? + (&g * (1.0 - self.beta1))?)?.detach();
            p.v = ((&p.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?.detach();
            let m_hat = (&p.m / bc1)?;
            let v_hat = (&p.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            let theta = p.var.as_tensor().detach();
            let theta = if p.decay && self.weight_decay > 0.0 {
                (theta * (1.0 - lr * self.weight_decay))?
            } else {
                theta
            };
            p.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`optim.m.<name>`, `optim.v.<name>`) for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("optim.m.{}", p.name), p.m.clone()),
                    (format!("optim.v.{}", p.name), p.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores moments saved by `state`; parameters without saved moments keep zeros.
    pub fn load_state(&mut self, t: u64, get: impl Fn(&str) -> Option<Tensor>) -> Result<usize> {
        let mut restored = 0;
        for p in &mut self.params {
            let (Some(m), Some(v)) = (
                get(&format!("optim.m.{}", p.name)),
                get(&format!("optim.v.{}", p.name)),
            ) else {
                continue;
            };
            if m.dims() == p.m.dims() && v.dims() == p.v.dims() {
                p.m = m.to_device(p.m.device())?;
                p.v = v.to_device(p.v.device())?;
                restored += 1;
            }
        }
        self.t = t;
        Ok(restored)
    }
}

/// AdamW's constants for one step.
#[derive(Debug, Clone, Copy)]
struct Hyper {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

/// The update of [`AdamW::step`] for one parameter in place, in three parallel passes
/// (each moment, then the values), for contiguous f32 CPU tensors (the same
/// arithmetic, in the same order, as the tensor-op version, which runs ≈ 14 passes
/// and allocates a tensor for each). Returns `false` (nothing done) for anything else.
fn fused_cpu_step(
    p: &mut Param,
    g: &Tensor,
    opt: Hyper,
    lr: f64,
    (bc1, bc2): (f64, f64),
) -> Result<bool> {
    let theta = p.var.as_tensor();
    let all_cpu_f32 = [theta, g, &p.m, &p.v]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous());
    if !all_cpu_f32 || g.dims() != theta.dims() {
        return Ok(false);
    }
    // Constants rounded to f32 as Candle's scalar ops round them.
    let (b1, b2) = (opt.beta1 as f32, opt.beta2 as f32);
    let (one_b1, one_b2) = ((1.0 - opt.beta1) as f32, (1.0 - opt.beta2) as f32);
    let (bc1, bc2, eps, lr32) = (bc1 as f32, bc2 as f32, opt.eps as f32, lr as f32);
    let decay = (p.decay && opt.weight_decay > 0.0).then_some((1.0 - lr * opt.weight_decay) as f32);
    // Three passes in place (moments, then the parameter): no fresh buffers to fill
    // and no copy into the variable, which were serial passes on the calling thread.
    p.m.inplace_op2(
        g,
        &Moment {
            keep: b1,
            take: one_b1,
            square: false,
        },
    )?;
    p.v.inplace_op2(
        g,
        &Moment {
            keep: b2,
            take: one_b2,
            square: true,
        },
    )?;
    let update = Update {
        bc1,
        bc2,
        eps,
        lr: lr32,
        decay,
    };
    theta.inplace_op3(&p.m, &p.v, &update)?;
    Ok(true)
}

/// Elements per parallel task of the in-place updates.
const CHUNK: usize = 1 << 14;

/// A moment's update in place: `m ← m·keep + g·take` (`g²` when `square`).
struct Moment {
    keep: f32,
    take: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (m, g) = (contiguous_f32_mut(dst, dst_l)?, contiguous_f32(g, gl)?);
        let &Self { keep, take, square } = self;
        zip_apply(m, g, |m, g| {
            let g = if square { g * g } else { g };
            *m = *m * keep + g * take;
        });
        Ok(())
    }
}

/// The parameter's update in place from its updated moments:
/// `θ ← θ·decay − lr·(m/bc1)/(√(v/bc2) + ε)`.
struct Update {
    bc1: f32,
    bc2: f32,
    eps: f32,
    lr: f32,
    decay: Option<f32>,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let theta = contiguous_f32_mut(dst, dst_l)?;
        let (m, v) = (contiguous_f32(m, ml)?, contiguous_f32(v, vl)?);
        let &Self {
            bc1,
            bc2,
            eps,
            lr,
            decay,
        } = self;
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(t, (m, v))| {
                for ((t, &m), &v) in t.iter_mut().zip(m).zip(v) {
                    let update = (m / bc1) / ((v / bc2).sqrt() + eps);
                    let decayed = decay.map_or(*t, |d| *t * d);
                    *t = decayed - update * lr;
                }
            });
        Ok(())
    }
}

/// Scales gradients of `vars` so their global L2 norm is at most `max_norm`
/// (`max_norm <= 0` only measures). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f32> {
    let mut total = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm as f32)
}

/// Learning rate at `step` (0-based) of `total` steps.
pub fn learning_rate(
    base: f64,
    schedule: Schedule,
    warmup: usize,
    step: usize,
    total: usize,
) -> f64 {
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup.min(step)) as f64 / span;
    learning_rate_at(base, schedule, warmup, step, progress)
}

/// Learning rate at `step` during warm-up, else at `progress` (0..=1) through the
/// schedule after it.
pub fn learning_rate_at(
    base: f64,
    schedule: Schedule,
    warmup: usize,
    step: usize,
    progress: f64,
) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine => {
            let progress = progress.clamp(0.0, 1.0);
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_minimises_a_quadratic_and_schedule_shapes() {
        let x = Var::new(&[3f32, -2.0], &Device::Cpu).expect("var");
        let mut opt = AdamW::new(vec![("x".into(), x.clone(), true)], 0.0).expect("opt");
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().expect("sqr").sum_all().expect("sum");
            let grads = loss.backward().expect("backward");
            opt.step(&grads, 0.05).expect("step");
        }
        let v = x.as_tensor().to_vec1::<f32>().expect("vec");
        assert!(v.iter().all(|x| x.abs() < 0.05), "{v:?}");
        assert_eq!(opt.state().len(), 2);
        assert!((learning_rate(1.0, Schedule::Cosine, 10, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, Schedule::Cosine, 10, 60, 110) - 0.5).abs() < 1e-9);
        assert!(learning_rate(1.0, Schedule::Cosine, 10, 110, 110).abs() < 1e-9);
        assert_eq!(learning_rate(0.3, Schedule::Constant, 0, 50, 100), 0.3);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let x = Var::new(&[3f32, 4.0], &Device::Cpu).expect("var");
        let loss = (x.as_tensor() * 1.0)
            .expect("mul")
            .sqr()
            .expect("sqr")
            .sum_all()
            .expect("sum");
        let mut grads = loss.backward().expect("backward");
        let norm = clip_grad_norm(&mut grads, std::slice::from_ref(&x), 1.0).expect("clip");
        assert!((norm - 10.0).abs() < 1e-4);
        let g = grads
            .get(x.as_tensor())
            .expect("grad")
            .to_vec1::<f32>()
            .expect("vec");
        assert!(((g[0] * g[0] + g[1] * g[1]).sqrt() - 1.0).abs() < 1e-3);
    }

    #[test]
    fn fused_cpu_update_equals_the_tensor_op_update() {
        // The same trajectory either way, with and without weight decay, over a few
        // steps (moments and bias correction).
        let init: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let run = |fused: bool| -> Vec<Vec<f32>> {
            let a = Var::from_tensor(&Tensor::new(init.as_slice(), &Device::Cpu).expect("a"))
                .expect("var");
            let b = Var::from_tensor(&a.as_tensor().affine(0.5, 1.0).expect("b")).expect("var");
            let mut opt = AdamW::new(
                vec![
                    ("a".into(), a.clone(), true),
                    ("b".into(), b.clone(), false),
                ],
                0.1,
            )
            .expect("opt");
            opt.fused_cpu = fused;
            for step in 0..4 {
                let loss = (a.as_tensor().sqr().and_then(|t| t.sum_all()).expect("a2")
                    + (b.as_tensor() * 3.0).and_then(|t| t.sum_all()).expect("b"))
                .expect("loss");
                let grads = loss.backward().expect("backward");
                opt.step(&grads, 0.01 * f64::from(step + 1)).expect("step");
            }
            [a.as_tensor(), b.as_tensor()]
                .iter()
                .map(|t| t.to_vec1::<f32>().expect("values"))
                .collect()
        };
        let (fused, reference) = (run(true), run(false));
        for (f, r) in fused.iter().zip(&reference) {
            let worst = f
                .iter()
                .zip(r)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-6, "fused update differs by {worst}");
        }
        // And the parameters did move.
        assert!(
            fused[0]
                .iter()
                .zip(&init)
                .any(|(x, y)| (x - y).abs() > 1e-3)
        );
    }
}
