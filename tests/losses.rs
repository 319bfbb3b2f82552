//! The training losses on hand-computed cases: values from the papers' formulas
//! written out for small 2-D batches, and gradients against central finite
//! differences (in f64, so the comparison is tight).

use candle_core::{DType, Device, Tensor, Var};
use vitrine::model::loss::{
    Criterion, LossConfig, LossKind, Mining, TripletLoss, mean_pairwise_cosine,
    multi_similarity_loss, norm_softmax_loss, norm_softmax_margin_loss, proxy_anchor_loss,
};
use vitrine::model::loss::{LossStats, MsParams};

const CPU: Device = Device::Cpu;

fn rows(xy: &[[f64; 2]]) -> Tensor {
    let flat: Vec<f64> = xy.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (xy.len(), 2), &CPU).expect("rows")
}

fn value(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .expect("f64")
        .to_scalar::<f64>()
        .expect("scalar")
}

fn ln1p_exp(x: f64) -> f64 {
    (1.0 + x.exp()).ln()
}

/// Autograd gradient of `f` at `x` against central differences, entry by entry.
fn check_gradient(x: &[[f64; 2]], f: &dyn Fn(&Tensor) -> LossStats) {
    let var = Var::from_tensor(&rows(x)).expect("var");
    let stats = f(var.as_tensor());
    let grads = stats.loss.backward().expect("backward");
    let g: Vec<f64> = grads
        .get(var.as_tensor())
        .expect("gradient")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    let h = 1e-6;
    for i in 0..x.len() {
        for j in 0..2 {
            let shifted = |d: f64| {
                let mut y = x.to_vec();
                y[i][j] += d;
                value(&f(&rows(&y)).loss)
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
            let analytic = g[i * 2 + j];
            assert!(
                (numeric - analytic).abs() < 1e-5 * (1.0 + numeric.abs()),
                "d/dx[{i}][{j}]: autograd {analytic}, finite differences {numeric}"
            );
        }
    }
}

/// Four unit rows, labels [0, 0, 1, 1]: cosines s01 = .6, s02 = .8, s03 = 0, s12 = .96,
/// s13 = .8, s23 = .6.
const FOUR: [[f64; 2]; 4] = [[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]];
const FOUR_LABELS: [u64; 4] = [0, 0, 1, 1];

const MS: MsParams = MsParams {
    alpha: 2.0,
    beta: 50.0,
    base: 0.5,
    epsilon: 0.1,
};

#[test]
fn multi_similarity_value_by_hand() {
    let stats = multi_similarity_loss(&rows(&FOUR), &FOUR_LABELS, MS).expect("loss");
    // Anchor 0: positive 1 (s .6) is kept (.6 < max neg .8 + .1); negatives above
    // min pos − ε = .5: only 2 (s .8). Anchor 3 mirrors it.
    let pos = 0.5 * ln1p_exp(-2.0 * (0.6 - 0.5));
    let a0 = pos + ln1p_exp(50.0 * (0.8 - 0.5)) / 50.0;
    // Anchor 1: positive 0 (s .6), negatives 2 (s .96) and 3 (s .8) both above .5.
    // Anchor 2 mirrors it.
    let a1 = pos + (1.0 + (50.0f64 * 0.46).exp() + (50.0f64 * 0.3).exp()).ln() / 50.0;
    let expected = (2.0 * a0 + 2.0 * a1) / 4.0;
    assert!(
        (value(&stats.loss) - expected).abs() < 1e-9,
        "{} vs {expected}",
        value(&stats.loss)
    );
    assert_eq!(stats.active, 1.0);
    // A far, well-separated batch mines nothing: zero loss, nothing active.
    let apart = rows(&[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]);
    let stats = multi_similarity_loss(&apart, &FOUR_LABELS, MS).expect("loss");
    assert_eq!(value(&stats.loss), 0.0);
    assert_eq!(stats.active, 0.0);
    assert!(multi_similarity_loss(&rows(&FOUR), &FOUR_LABELS[..3], MS).is_err());
}

#[test]
fn multi_similarity_gradient() {
    check_gradient(&FOUR, &|x| {
        multi_similarity_loss(x, &FOUR_LABELS, MS).expect("loss")
    });
}

#[test]
fn norm_softmax_value_by_hand() {
    // Proxies along the axes (already unit); temperature 0.1.
    let proxies = rows(&[[1.0, 0.0], [0.0, 1.0]]);
    let x = rows(&[[1.0, 0.0], [0.6, 0.8]]);
    let stats = norm_softmax_loss(&x, &proxies, &[0, 1], 0.1).expect("loss");
    // Row 0: logits [10, 0] → ln(1 + e^-10). Row 1: logits [6, 8] → ln(1 + e^-2).
    let expected = f64::midpoint(ln1p_exp(-10.0), ln1p_exp(-2.0));
    assert!(
        (value(&stats.loss) - expected).abs() < 1e-7,
        "{} vs {expected}",
        value(&stats.loss)
    );
    assert_eq!(stats.active, 0.0);
    // Row 1 labelled class 0 is misranked (its cosine with proxy 1 is larger).
    let stats = norm_softmax_loss(&x, &proxies, &[0, 0], 0.1).expect("loss");
    assert_eq!(stats.active, 0.5);
    // Proxies are normalised: scaling them changes nothing.
    let scaled = (rows(&[[1.0, 0.0], [0.0, 1.0]]) * 7.0).expect("scale");
    let same = norm_softmax_loss(&x, &scaled, &[0, 1], 0.1).expect("loss");
    assert!((value(&same.loss) - expected).abs() < 1e-7);
    assert!(norm_softmax_loss(&x, &proxies, &[0, 2], 0.1).is_err());
}

#[test]
fn norm_softmax_gradient_reaches_embeddings_and_proxies() {
    let proxies = [[0.9, 0.3], [-0.2, 1.1], [0.5, -0.7]];
    let x = [[1.0, 0.1], [0.6, 0.8], [0.3, -0.9]];
    let p = rows(&proxies);
    check_gradient(&x, &|x| {
        norm_softmax_loss(x, &p, &[0, 1, 2], 0.2).expect("loss")
    });
    let e = rows(&x);
    check_gradient(&proxies, &|p| {
        norm_softmax_loss(&e, p, &[0, 1, 2], 0.2).expect("loss")
    });
}

#[test]
fn norm_softmax_margin_value_by_hand() {
    let proxies = rows(&[[1.0, 0.0], [0.0, 1.0]]);
    let x = rows(&[[1.0, 0.0], [0.6, 0.8]]);
    // Margin 0.2 at temperature 0.1 takes 2 off each row's own logit: row 0 [8, 0],
    // row 1 [6, 6].
    let stats = norm_softmax_margin_loss(&x, &proxies, &[0, 1], 0.1, 0.2).expect("loss");
    let expected = f64::midpoint(ln1p_exp(-8.0), ln1p_exp(0.0));
    assert!(
        (value(&stats.loss) - expected).abs() < 1e-6,
        "{} vs {expected}",
        value(&stats.loss)
    );
    // The margin shapes the loss, not which rows count as misranked.
    assert_eq!(stats.active, 0.0);
    let plain = norm_softmax_margin_loss(&x, &proxies, &[0, 1], 0.1, 0.0).expect("loss");
    let reference = norm_softmax_loss(&x, &proxies, &[0, 1], 0.1).expect("loss");
    assert_eq!(value(&plain.loss), value(&reference.loss));
    let p = rows(&[[0.9, 0.3], [-0.2, 1.1], [0.5, -0.7]]);
    check_gradient(&[[1.0, 0.1], [0.6, 0.8], [0.3, -0.9]], &|x| {
        norm_softmax_margin_loss(x, &p, &[0, 1, 2], 0.2, 0.1).expect("loss")
    });
}

#[test]
fn proxy_anchor_value_by_hand() {
    let proxies = rows(&[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]);
    let x = rows(&[[1.0, 0.0], [0.6, 0.8]]);
    let (alpha, delta) = (32.0, 0.1);
    let stats = proxy_anchor_loss(&x, &proxies, &[0, 1], alpha as f32, delta as f32).expect("loss");
    // Proxies with positives: 0 (x0, s 1) and 1 (x1, s .8).
    let pos = f64::midpoint(
        ln1p_exp(-alpha * (1.0 - delta)),
        ln1p_exp(-alpha * (0.8 - delta)),
    );
    // Negatives per proxy, over all three proxies: P0 ← x1 (s .6); P1 ← x0 (s 0);
    // P2 ← x0 (s −1) and x1 (s −.6).
    let neg = (ln1p_exp(alpha * (0.6 + delta))
        + ln1p_exp(alpha * delta)
        + (1.0 + (alpha * (-1.0 + delta)).exp() + (alpha * (-0.6 + delta)).exp()).ln())
        / 3.0;
    let got = value(&stats.loss);
    assert!(
        (got - (pos + neg)).abs() < 1e-6 * (pos + neg),
        "{got} vs {}",
        pos + neg
    );
}

#[test]
fn proxy_anchor_gradient() {
    let proxies = rows(&[[0.9, 0.3], [-0.2, 1.1], [0.5, -0.7]]);
    check_gradient(&[[1.0, 0.1], [0.6, 0.8], [0.3, -0.9], [0.8, 0.5]], &|x| {
        proxy_anchor_loss(x, &proxies, &[0, 1, 2, 0], 4.0, 0.1).expect("loss")
    });
}

#[test]
fn soft_margin_batch_hard_value_and_gradient() {
    let loss = TripletLoss {
        margin: 0.5,
        mining: Mining::BatchHard,
        soft_margin: true,
    };
    // On a line, labels [0, 0, 1, 1] at x = 0, 2, 1.4, 3 (see tests/model.rs):
    // per anchor (hardest positive, hardest negative): a0 (2, 1.4), a1 (2, .6),
    // a2 (1.6, .6), a3 (1.6, 1).
    let x = rows(&[[0.0, 0.0], [2.0, 0.0], [1.4, 0.0], [3.0, 0.0]]);
    let stats = loss.compute(&x, &FOUR_LABELS).expect("loss");
    let expected =
        (ln1p_exp(2.0 - 1.4) + ln1p_exp(2.0 - 0.6) + ln1p_exp(1.6 - 0.6) + ln1p_exp(1.6 - 1.0))
            / 4.0;
    assert!((value(&stats.loss) - expected).abs() < 1e-9);
    // Every positive is farther than its negative: all four still on the wrong side.
    assert_eq!(stats.active, 1.0);
    check_gradient(&[[0.0, 0.1], [2.0, -0.2], [1.4, 0.3], [3.0, 0.05]], &|x| {
        loss.compute(x, &FOUR_LABELS).expect("loss")
    });
}

#[test]
fn criterion_reports_pair_geometry_for_every_loss() {
    let x = rows(&FOUR).to_dtype(DType::F32).expect("f32");
    for kind in [
        LossKind::NormSoftmax,
        LossKind::ProxyAnchor,
        LossKind::MultiSimilarity,
        LossKind::Triplet,
    ] {
        let cfg = LossConfig {
            kind,
            mining: Mining::BatchHard,
            ..LossConfig::default()
        };
        let c = Criterion::new(cfg, 2, 2, &CPU, 1).expect("criterion");
        assert_eq!(c.proxies().is_some(), kind.has_proxies());
        let stats = c.compute(&x, &FOUR_LABELS, &[0, 0, 1, 1]).expect("loss");
        assert!(value(&stats.loss).is_finite(), "{kind}");
        if kind != LossKind::Triplet {
            // Same-item pairs: d(0,1) = d(2,3) = √(2 − 1.2); other pairs from the cosines.
            let d = |c: f64| (2.0 - 2.0 * c).sqrt();
            let ap = d(0.6);
            let an = (d(0.8) + d(0.0) + d(0.96) + d(0.8)) / 4.0;
            assert!((f64::from(stats.mean_ap) - ap).abs() < 1e-5, "{kind}");
            assert!((f64::from(stats.mean_an) - an).abs() < 1e-5, "{kind}");
        }
    }
    assert!(
        Criterion::new(LossConfig::default(), 1, 2, &CPU, 1).is_err(),
        "a proxy loss needs two classes"
    );
    // The spread of those rows: mean of the six cosines.
    let flat: Vec<f32> = FOUR.iter().flatten().map(|&v| v as f32).collect();
    let mean = (0.6 + 0.8 + 0.0 + 0.96 + 0.8 + 0.6) / 6.0;
    assert!((f64::from(mean_pairwise_cosine(&flat, 2)) - mean).abs() < 1e-6);
}

/// `ln(1 + Σ e^{xᵢ})` in f64 without overflow.
fn ln1p_sum_exp(xs: &[f64]) -> f64 {
    let top = xs.iter().copied().fold(0.0, f64::max);
    top + ((-top).exp() + xs.iter().map(|x| (x - top).exp()).sum::<f64>()).ln()
}

/// Loss and gradient of `f` on `x` in f32 (the training dtype): both finite.
fn finite_in_f32(x: &Tensor, f: &dyn Fn(&Tensor) -> LossStats) -> f64 {
    let var = Var::from_tensor(&x.to_dtype(DType::F32).expect("f32")).expect("var");
    let stats = f(var.as_tensor());
    let loss = value(&stats.loss);
    let grad = stats.loss.backward().expect("backward");
    let g: Vec<f32> = grad
        .get(var.as_tensor())
        .expect("gradient")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    assert!(
        loss.is_finite() && g.iter().all(|v| v.is_finite()),
        "loss {loss}, gradient {g:?}"
    );
    loss
}

#[test]
fn losses_stay_finite_in_f32_over_their_whole_setting_ranges() {
    // Identical embeddings, the worst case: every cosine is 1, every pair is mined.
    let same = rows(&[[0.6, 0.8]; 4]);
    for (beta, base) in [(200.0, 0.5), (100.0, 0.0), (1000.0, 0.0), (50.0, 0.5)] {
        let p = MsParams {
            alpha: 2.0,
            beta,
            base,
            epsilon: 0.1,
        };
        let got = finite_in_f32(&same, &|x| {
            multi_similarity_loss(x, &FOUR_LABELS, p).expect("loss")
        });
        // Per anchor one positive and two negatives, all at cosine 1.
        let (a, b, l) = (2.0, f64::from(beta), f64::from(base));
        let expected =
            ln1p_sum_exp(&[-a * (1.0 - l)]) / a + ln1p_sum_exp(&[b * (1.0 - l), b * (1.0 - l)]) / b;
        assert!(
            (got - expected).abs() < 1e-4 * expected,
            "β {beta}, λ {base}: {got} vs {expected}"
        );
    }
    // Proxy-anchor at its largest scale and margin, with an image on its proxy.
    let proxies = rows(&[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        .to_dtype(DType::F32)
        .expect("f32");
    let x = rows(&[[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]]);
    let got = finite_in_f32(&x, &|x| {
        proxy_anchor_loss(x, &proxies, &[1, 0, 2], 1000.0, 1.0).expect("loss")
    });
    assert!(
        got > 100.0,
        "every image sits on another item's proxy: {got}"
    );
    // The smallest temperature allowed.
    finite_in_f32(&x, &|x| {
        norm_softmax_loss(x, &proxies, &[1, 0, 2], 0.001).expect("loss")
    });
}

#[test]
fn loss_settings_out_of_range_name_the_key_and_the_range() {
    for (key, value) in [
        ("ms_beta", "2000.0"),
        ("ms_alpha", "0.0"),
        ("proxy_alpha", "1e9"),
        ("temperature", "1e-40"),
        ("temperature", "100.0"),
    ] {
        let text = format!("[loss]\n{key} = {value}\n");
        let err = vitrine::config::Config::from_toml_str(&text, "user.toml")
            .expect_err(&format!("{key} = {value}"));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("loss.{key}")) && msg.contains("must be between"),
            "{msg}"
        );
    }
    // What the papers use, and the values once reported to NaN, are valid.
    for text in [
        "[loss]\nms_beta = 200.0\n",
        "[loss]\nms_beta = 100.0\nms_base = 0.0\n",
        "[loss]\ntemperature = 0.05\nproxy_alpha = 32.0\n",
    ] {
        assert!(vitrine::config::Config::from_toml_str(text, "user.toml").is_ok());
    }
}
