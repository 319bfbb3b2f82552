//! An exponential moving average of the weights (Polyak averaging), kept beside the
//! model: training moves the live weights, while validation, checkpoints — and so
//! index and search — use the average. Early on the decay is lowered to
//! `(1 + t) / (10 + t)`, so the average follows a network still far from its start
//! instead of remembering its random initialisation.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use candle_nn::VarMap;

use crate::model::embedder::sorted_vars;
use crate::model::ops::tensor::{contiguous_f32, contiguous_f32_mut};
use vitrine_kernels::elementwise::zip_apply;

/// Prefix of the live weights in `last.optim.safetensors` while the checkpoint's
/// weights file holds the average.
pub const LIVE_PREFIX: &str = "live.";

pub struct WeightAverage {
    decay: f64,
    /// Every variable of the model (BatchNorm running statistics included) with its
    /// average, sorted by name.
    pairs: Vec<(String, Var, Tensor)>,
    /// Whether the variables hold the average now (between two [`Self::swap`]s).
    swapped: bool,
    /// Whether CPU f32 weights are folded in place (off only in tests, to compare it
    /// with the tensor-op fold).
    in_place: bool,
}

impl WeightAverage {
    /// Starts the average at the model's current weights.
    pub fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        let pairs = sorted_vars(varmap)
            .into_iter()
            .map(|(name, var)| {
                let copy = var.as_tensor().copy()?;
                Ok((name, var, copy))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            pairs,
            swapped: false,
            in_place: true,
        })
    }

    /// Folds the live weights in after optimiser step `step` (1-based).
    pub fn update(&mut self, step: usize) -> Result<()> {
        debug_assert!(!self.swapped);
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for (_, var, avg) in &mut self.pairs {
            // avg + (1 − d)(w − avg): a weight that does not move (a frozen stage)
            // keeps its average exactly.
            if !self.in_place || !fold_in_place(avg, var.as_tensor(), 1.0 - d)? {
                *avg = (&*avg + (var.as_tensor() - &*avg)?.affine(1.0 - d, 0.0)?)?;
            }
        }
        Ok(())
    }

    /// Exchanges the model's weights and the average: call once to evaluate or save
    /// the average, and once more to go back to training.
    pub fn swap(&mut self) -> Result<()> {
        for (_, var, avg) in &mut self.pairs {
            let held = var.as_tensor().copy()?;
            var.set(avg)?;
            *avg = held;
        }
        self.swapped = !self.swapped;
        Ok(())
    }

    /// The live weights, named `live.<name>`, while the model holds the average (for a
    /// checkpoint that must resume training where it was).
    pub fn live_state(&self) -> Vec<(String, Tensor)> {
        debug_assert!(self.swapped);
        self.pairs
            .iter()
            .map(|(name, _, live)| (format!("{LIVE_PREFIX}{name}"), live.clone()))
            .collect()
    }

    /// After the model was loaded with a checkpoint's average: the live weights from
    /// `saved` go back into the model and the loaded values become the average.
    /// Returns false (and changes nothing) unless every variable has its live tensor.
    pub fn restore_live(&mut self, saved: impl Fn(&str) -> Option<Tensor>) -> Result<bool> {
        let live: Option<Vec<Tensor>> = self
            .pairs
            .iter()
            .map(|(name, var, _)| {
                saved(&format!("{LIVE_PREFIX}{name}")).filter(|t| t.dims() == var.dims())
            })
            .collect();
        let Some(live) = live else {
            return Ok(false);
        };
        for ((_, var, _), t) in self.pairs.iter().zip(live) {
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(true)
    }
}

/// [`WeightAverage::update`]'s fold for one contiguous f32 CPU tensor, in place and in
/// parallel: the same arithmetic in the same order as the tensor ops, which take three
/// serial passes and three fresh tensors per variable every step (ResNet18 at 64 px
/// trained ~4% faster without them). Returns `false` (nothing done) for anything else.
fn fold_in_place(avg: &Tensor, live: &Tensor, take: f64) -> Result<bool> {
    let cpu_f32 = [avg, live]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous());
    if !cpu_f32 || avg.dims() != live.dims() {
        return Ok(false);
    }
    avg.inplace_op2(live, &Fold { take: take as f32 })?;
    Ok(true)
}

/// `avg ← avg + (w − avg)·take`, as `affine(take, 0)` rounds it.
struct Fold {
    take: f32,
}

impl InplaceOp2 for Fold {
    fn name(&self) -> &'static str {
        "weight-average-fold"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<()> {
        let (avg, w) = (contiguous_f32_mut(dst, dl)?, contiguous_f32(w, wl)?);
        let take = self.take;
        zip_apply(avg, w, |a, w| *a += (w - *a) * take + 0.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn varmap_with(value: f32) -> VarMap {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let w = vb
            .get_with_hints(3, "w", candle_nn::Init::Const(f64::from(value)))
            .expect("tensor op");
        drop(w);
        varmap
    }

    fn value(varmap: &VarMap) -> f32 {
        sorted_vars(varmap)[0]
            .1
            .as_tensor()
            .to_vec1::<f32>()
            .expect("tensor op")[0]
    }

    #[test]
    fn the_average_lags_the_live_weights_and_swaps_back() {
        let varmap = varmap_with(0.0);
        let mut avg = WeightAverage::new(&varmap, 0.5).expect("tensor op");
        let var = sorted_vars(&varmap)[0].1.clone();
        var.set(&Tensor::new(&[1f32, 1.0, 1.0], &Device::Cpu).expect("tensor op"))
            .expect("tensor op");
        // Step 1: decay min(0.5, 2/11) = 0.1818…: the average moves most of the way.
        avg.update(1).expect("tensor op");
        avg.swap().expect("tensor op");
        let averaged = value(&varmap);
        assert!((averaged - (1.0 - 2.0 / 11.0)).abs() < 1e-6, "{averaged}");
        assert_eq!(
            avg.live_state()[0].1.to_vec1::<f32>().expect("tensor op"),
            [1.0; 3]
        );
        avg.swap().expect("tensor op");
        assert_eq!(value(&varmap), 1.0);
    }

    #[test]
    fn the_in_place_fold_equals_the_tensor_op_fold_bit_for_bit() {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let w = vb
            .get_with_hints(
                (70_001,),
                "w",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .expect("tensor op");
        let mut fused = WeightAverage::new(&varmap, 0.995).expect("tensor op");
        let mut ops = WeightAverage::new(&varmap, 0.995).expect("tensor op");
        ops.in_place = false;
        let var = sorted_vars(&varmap)[0].1.clone();
        for step in 1..=5 {
            let moved =
                (var.as_tensor() + w.randn_like(0.0, 0.1).expect("tensor op")).expect("tensor op");
            var.set(&moved).expect("tensor op");
            fused.update(step).expect("tensor op");
            ops.update(step).expect("tensor op");
        }
        let bits = |a: &WeightAverage| -> Vec<u32> {
            let t = &a.pairs[0].2;
            t.to_vec1::<f32>()
                .expect("tensor op")
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        let (f, o) = (bits(&fused), bits(&ops));
        assert_eq!(f.len(), 70_001);
        assert!(f == o, "the in-place fold differs from the tensor ops");
        assert_ne!(
            f,
            var.as_tensor()
                .to_vec1::<f32>()
                .expect("tensor op")
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            "the average must lag the live weights"
        );
    }

    #[test]
    fn restoring_puts_the_live_weights_back_and_keeps_the_loaded_average() {
        let varmap = varmap_with(0.25);
        let mut avg = WeightAverage::new(&varmap, 0.9).expect("tensor op");
        let live = Tensor::new(&[2f32, 2.0, 2.0], &Device::Cpu).expect("tensor op");
        assert!(!avg.restore_live(|_| None).expect("tensor op"));
        assert_eq!(value(&varmap), 0.25);
        assert!(
            avg.restore_live(|n| (n == "live.w").then(|| live.clone()))
                .expect("tensor op")
        );
        assert_eq!(value(&varmap), 2.0);
        avg.swap().expect("tensor op");
        assert_eq!(value(&varmap), 0.25);
    }
}
