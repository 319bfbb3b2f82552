//! The GEMM conv op (`vitrine::model::ops::conv`, including its Winograd forward for 3×3
//! stride-1 convs) against an f64 direct loop and Candle's reference `conv2d`: output,
//! input gradient and kernel gradient, on odd shapes, strides and paddings.

use std::fmt::Write as _;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use vitrine::model::ops::conv::conv2d;

/// Deterministic values in [-1, 1) (Candle's CPU generator cannot be seeded).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(dims: &[usize], seed: u64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(values(n, seed), dims, &Device::Cpu).expect("tensor")
}

/// Largest |a − b| relative to the largest |b| (plus a floor).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
    let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b");
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// `(output, dx, dw)` of `sum(conv(x, w) · r)` with either implementation.
fn run(
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    stride: usize,
    pad: usize,
    gemm: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let xv = Var::from_tensor(x)?;
    let wv = Var::from_tensor(w)?;
    let y = if gemm {
        conv2d(xv.as_tensor(), wv.as_tensor(), stride, pad)?
    } else {
        xv.as_tensor().conv2d(wv.as_tensor(), pad, stride, 1, 1)?
    };
    let grads = (&y * r)?.sum_all()?.backward()?;
    let dx = grads.get(xv.as_tensor()).expect("dx").clone();
    let dw = grads.get(wv.as_tensor()).expect("dw").clone();
    Ok((y, dx, dw))
}

/// `(n, c, h, w, k, kh, kw, stride, pad)`.
type Case = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CASES: &[Case] = &[
    (2, 3, 7, 9, 5, 3, 3, 1, 1),
    (3, 4, 11, 8, 6, 3, 3, 2, 1),
    (1, 3, 13, 13, 8, 7, 7, 2, 3),
    (2, 5, 9, 10, 7, 1, 1, 1, 0),
    (2, 6, 9, 7, 4, 1, 1, 2, 0),
    (1, 2, 10, 11, 3, 5, 5, 3, 2),
    (2, 3, 6, 5, 4, 2, 3, 1, 0),
    (1, 2, 3, 3, 3, 3, 3, 1, 2),
    (1, 1, 4, 4, 2, 6, 6, 1, 1),
    (5, 8, 4, 4, 16, 3, 3, 1, 1),
    // 3×3, stride 1, padding 1 runs by Winograd's F(2×2, 3×3) in the forward pass:
    // odd maps (partial edge tiles), channel counts off the 16-lane blocks, a 1×1 map.
    (2, 37, 11, 6, 20, 3, 3, 1, 1),
    (1, 16, 1, 1, 3, 3, 3, 1, 1),
    (3, 17, 5, 3, 33, 3, 3, 1, 1),
    // Enough tiles (≥ 256) for both gradients by Winograd too: F(4×4) on 33×31 maps,
    // F(2×2) on 4×4 maps.
    (4, 19, 33, 31, 21, 3, 3, 1, 1),
    (64, 5, 4, 4, 7, 3, 3, 1, 1),
];

/// Direct-loop f64 reference: `(y, dx, dw)` of `sum(conv(x, w) · r)`.
#[allow(clippy::type_complexity)]
fn naive(
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    stride: usize,
    pad: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c, h, wd) = x.dims4().expect("x");
    let (k, _, kh, kw) = w.dims4().expect("w");
    let (_, _, oh, ow) = r.dims4().expect("r");
    let flat = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("vec")
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let (xs, ws, rs) = (flat(x), flat(w), flat(r));
    let mut y = vec![0.0; n * k * oh * ow];
    let mut dx = vec![0.0; xs.len()];
    let mut dw = vec![0.0; ws.len()];
    for ni in 0..n {
        for ki in 0..k {
            for o in 0..oh {
                for q in 0..ow {
                    let yi = ((ni * k + ki) * oh + o) * ow + q;
                    for ci in 0..c {
                        for a in 0..kh {
                            for b in 0..kw {
                                let (ih, iw) = (
                                    (o * stride + a) as isize - pad as isize,
                                    (q * stride + b) as isize - pad as isize,
                                );
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xi = ((ni * c + ci) * h + ih as usize) * wd + iw as usize;
                                let wi = ((ki * c + ci) * kh + a) * kw + b;
                                y[yi] += xs[xi] * ws[wi];
                                dx[xi] += rs[yi] * ws[wi];
                                dw[wi] += rs[yi] * xs[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

/// Largest |a − b| relative to the largest |b| (plus a floor), against f64 values.
fn rel_err64(a: &Tensor, b: &[f64]) -> f64 {
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((f64::from(*x) - y).abs()));
    diff / scale
}

#[test]
fn gemm_conv_matches_reference_forward_and_both_gradients() {
    let mut candle_backward_failed = 0;
    for (i, &(n, c, h, w, k, kh, kw, stride, pad)) in CASES.iter().enumerate() {
        let x = tensor(&[n, c, h, w], 1 + i as u64);
        let wt = tensor(&[k, c, kh, kw], 100 + i as u64);
        let oh = (h + 2 * pad - kh) / stride + 1;
        let ow = (w + 2 * pad - kw) / stride + 1;
        let r = tensor(&[n, k, oh, ow], 200 + i as u64);
        let case = format!("case {i}: {:?}", CASES[i]);
        let (y1, dx1, dw1) = run(&x, &wt, &r, stride, pad, true).expect("gemm");
        // The f64 direct loop, for every case.
        let (y, dx, dw) = naive(&x, &wt, &r, stride, pad);
        assert!(
            rel_err64(&y1, &y) < 1e-5,
            "{case}: output vs naive {}",
            rel_err64(&y1, &y)
        );
        assert!(
            rel_err64(&dx1, &dx) < 1e-5,
            "{case}: dx vs naive {}",
            rel_err64(&dx1, &dx)
        );
        assert!(
            rel_err64(&dw1, &dw) < 1e-5,
            "{case}: dw vs naive {}",
            rel_err64(&dw1, &dw)
        );
        // Candle's conv2d: its forward always; its backward where it works (Candle 0.11
        // fails with a shape mismatch when stride does not divide `in + 2·pad − kernel`).
        let y0 = x.conv2d(&wt, pad, stride, 1, 1).expect("candle fwd");
        assert!(
            rel_err(&y1, &y0) < 1e-5,
            "{case}: output {}",
            rel_err(&y1, &y0)
        );
        match run(&x, &wt, &r, stride, pad, false) {
            Ok((_, dx0, dw0)) => {
                assert!(
                    rel_err(&dx1, &dx0) < 1e-5,
                    "{case}: dx {}",
                    rel_err(&dx1, &dx0)
                );
                assert!(
                    rel_err(&dw1, &dw0) < 1e-5,
                    "{case}: dw {}",
                    rel_err(&dw1, &dw0)
                );
            }
            Err(_) => candle_backward_failed += 1,
        }
    }
    // Most cases must have been checked against Candle's gradients too.
    assert!(
        candle_backward_failed * 2 < CASES.len(),
        "{candle_backward_failed} Candle backward failures"
    );
}

#[test]
fn gemm_conv_takes_non_contiguous_input_and_gives_only_the_needed_gradient() {
    // A transposed (non-contiguous) input that is a plain tensor: only dw is needed.
    let x = tensor(&[2, 3, 9, 7], 7).transpose(2, 3).expect("t");
    let wv = Var::from_tensor(&tensor(&[4, 3, 3, 3], 8)).expect("var");
    let y1 = conv2d(&x, wv.as_tensor(), 2, 1).expect("gemm");
    let y0 = x.conv2d(wv.as_tensor(), 1, 2, 1, 1).expect("candle");
    assert!(rel_err(&y1, &y0) < 1e-5);
    let g1 = y1
        .sqr()
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("bwd");
    let g0 = y0
        .sqr()
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("bwd");
    let dw1 = g1.get(wv.as_tensor()).expect("dw");
    let dw0 = g0.get(wv.as_tensor()).expect("dw");
    assert!(rel_err(dw1, dw0) < 1e-5, "dw {}", rel_err(dw1, dw0));
}

#[test]
fn gemm_conv_rejects_mismatched_channels() {
    let x = tensor(&[1, 3, 5, 5], 1);
    let w = tensor(&[2, 4, 3, 3], 2);
    assert!(conv2d(&x, &w, 1, 1).is_err());
}

#[test]
fn gemm_conv_falls_back_for_other_dtypes() {
    let x = tensor(&[1, 3, 5, 5], 1).to_dtype(DType::F64).expect("f64");
    let w = tensor(&[2, 3, 3, 3], 2).to_dtype(DType::F64).expect("f64");
    let y = conv2d(&x, &w, 1, 1).expect("f64 conv");
    assert_eq!(y.dims(), &[1, 2, 5, 5]);
    assert_eq!(y.dtype(), DType::F64);
}

/// Per-layer profile of ResNet50 convs at 128 px, batch 48 (16 triplets):
/// `cargo test --release --test conv -- --ignored --nocapture layer_timings`.
#[test]
#[ignore = "timing, run by hand"]
fn layer_timings() {
    let batch = std::env::var("CONV_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    // (name, c, hw, k, kernel, stride, pad)
    let layers = [
        ("stem 7x7 s2 3-64 @128", 3, 128, 64, 7, 2, 3),
        ("l1 1x1 64-64 @32", 64, 32, 64, 1, 1, 0),
        ("l1 3x3 64-64 @32", 64, 32, 64, 3, 1, 1),
        ("l1 1x1 64-256 @32", 64, 32, 256, 1, 1, 0),
        ("l1 1x1 256-64 @32", 256, 32, 64, 1, 1, 0),
        ("l2 3x3 s2 128-128 @32", 128, 32, 128, 3, 2, 1),
        ("l3 3x3 256-256 @8", 256, 8, 256, 3, 1, 1),
        ("l4 1x1 2048-512 @4", 2048, 4, 512, 1, 1, 0),
        ("l4 3x3 512-512 @4", 512, 4, 512, 3, 1, 1),
    ];
    for (name, c, hw, k, ks, stride, pad) in layers {
        let x = tensor(&[batch, c, hw, hw], 1);
        let w = tensor(&[k, c, ks, ks], 2).affine(0.05, 0.0).expect("scale");
        let o = (hw + 2 * pad - ks) / stride + 1;
        let r = tensor(&[batch, k, o, o], 3);
        let mut line = format!("{name:<26}");
        for gemm in [false, true] {
            let _ = run(&x, &w, &r, stride, pad, gemm).expect("warm");
            let xv = Var::from_tensor(&x).expect("x");
            let wv = Var::from_tensor(&w).expect("w");
            let t0 = Instant::now();
            let y = if gemm {
                conv2d(xv.as_tensor(), wv.as_tensor(), stride, pad)
            } else {
                xv.as_tensor().conv2d(wv.as_tensor(), pad, stride, 1, 1)
            }
            .expect("fwd");
            let fwd = t0.elapsed().as_secs_f64() * 1e3;
            let loss = (&y * &r).and_then(|t| t.sum_all()).expect("loss");
            let t1 = Instant::now();
            let _g = loss.backward().expect("bwd");
            let bwd = t1.elapsed().as_secs_f64() * 1e3;
            let which = if gemm { "gemm" } else { "candle" };
            write!(line, " {which} fwd {fwd:7.1} bwd {bwd:7.1} ms |").expect("write");
        }
        println!("{line}");
    }
}

/// A BatchNorm over `c` channels with non-trivial weight, bias and running statistics.
fn batch_norm_layer(c: usize, seed: u64) -> (candle_nn::BatchNorm, candle_nn::VarMap) {
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = candle_nn::BatchNormConfig {
        eps: 1e-5,
        remove_mean: true,
        affine: true,
        momentum: 0.1,
    };
    let bn = candle_nn::batch_norm(c, cfg, vb).expect("bn");
    for (name, var) in varmap.data().lock().expect("lock").iter() {
        let v = tensor(&[c], seed + name.len() as u64);
        let v = if name.contains("var") {
            v.abs().and_then(|t| t.affine(1.0, 0.5))
        } else {
            Ok(v)
        };
        var.set(&v.expect("init")).expect("set");
    }
    (bn, varmap)
}

#[test]
fn fused_batch_norm_matches_candle_in_both_modes_with_and_without_relu() {
    use candle_core::ModuleT;
    use vitrine::model::ops::batch_norm::batch_norm;
    // (n, c, h, w, scale, offset): the last has a mean far above its spread, where
    // one-pass variance formulas lose precision.
    let cases = [
        (2, 3, 5, 7, 2.0, 0.3),
        (4, 8, 3, 3, 2.0, 0.3),
        (3, 5, 1, 1, 2.0, 0.3),
        (1, 4, 6, 5, 2.0, 0.3),
        (2, 6, 9, 9, 0.5, 40.0),
    ];
    for (i, &(n, c, h, w, scale, offset)) in cases.iter().enumerate() {
        for train in [true, false] {
            for relu in [false, true] {
                let case = format!("case {i} ({n},{c},{h},{w}) train {train} relu {relu}");
                let x = tensor(&[n, c, h, w], 300 + i as u64)
                    .affine(scale, offset)
                    .expect("x");
                let r = tensor(&[n, c, h, w], 400 + i as u64);
                let mut results = Vec::new();
                for fused in [false, true] {
                    let (bn, varmap) = batch_norm_layer(c, 50 + i as u64);
                    let xv = Var::from_tensor(&x).expect("x");
                    let y = if fused {
                        batch_norm(xv.as_tensor(), &bn, train, relu).expect("fused")
                    } else {
                        let y = bn.forward_t(xv.as_tensor(), train).expect("candle");
                        if relu { y.relu().expect("relu") } else { y }
                    };
                    let grads = (&y * &r)
                        .and_then(|t| t.sum_all())
                        .and_then(|t| t.backward())
                        .expect("bwd");
                    let data = varmap.data().lock().expect("lock");
                    let get = |k: &str| data.get(k).expect(k).as_tensor().clone();
                    let (wt, b) = (get("weight"), get("bias"));
                    results.push([
                        y,
                        grads.get(xv.as_tensor()).expect("dx").clone(),
                        grads.get(&wt).expect("dgamma").clone(),
                        grads.get(&b).expect("dbeta").clone(),
                        get("running_mean"),
                        get("running_var"),
                    ]);
                }
                let names = ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"];
                for (k, name) in names.iter().enumerate() {
                    let e = rel_err(&results[1][k], &results[0][k]);
                    assert!(e < 2e-5, "{case}: {name} differs by {e}");
                }
            }
        }
    }
}
