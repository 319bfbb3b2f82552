//! The model: ResNet names and BatchNorm behaviour, the embedder, triplet losses,
//! training steps and checkpoint files.

use std::collections::HashMap;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD, VarBuilder, VarMap};
use vitrine::model::checkpoint::{self, CheckpointError};
use vitrine::model::embedder::l2_normalize;
use vitrine::model::loss::{Mining, TripletLoss, offline_triplet_loss, online_triplet_loss};
use vitrine::model::resnet::{Channels, ResNet, ResNetConfig, generalized_mean, max_pool_3x3_s2};
use vitrine::model::{Backbone, Embedder, EmbedderConfig, Precision};
use vitrine::rng::Rng;

const CPU: Device = Device::Cpu;

fn cfg(backbone: Backbone, train_from_stage: usize) -> EmbedderConfig {
    EmbedderConfig {
        backbone,
        embedding_dim: 512,
        dropout: 0.0,
        train_from_stage,
        bnneck: false,
        flip_average: false,
        invert_average: false,
        gem_p: 1.0,
        precision: Precision::Fp32,
    }
}

/// Deterministic N(0, 1) tensor.
fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, &CPU).expect("tensor")
}

fn var(varmap: &VarMap, name: &str) -> Var {
    varmap
        .data()
        .lock()
        .expect("lock")
        .get(name)
        .unwrap_or_else(|| panic!("no var {name}"))
        .clone()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .expect("flat")
        .to_vec1::<f32>()
        .expect("vec")
}

fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .expect("f32")
        .to_scalar::<f32>()
        .expect("scalar")
}

fn backbone_shapes(backbone: Backbone) -> HashMap<String, Vec<usize>> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let cfg = ResNetConfig {
        backbone,
        ..ResNetConfig::default()
    };
    ResNet::new(cfg, vb).expect("resnet");
    let data = varmap.data().lock().expect("lock");
    data.iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

#[test]
fn resnet_names_and_shapes_are_torchvision_state_dict_keys() {
    // torchvision's state_dict without `fc.*` and `*.num_batches_tracked`:
    // resnet18 122 − 2 − 20 = 100 keys, resnet34 218 − 2 − 36 = 180,
    // resnet50 320 − 2 − 53 = 265. Parameter counts (running stats excluded) are
    // torchvision's totals minus the fc layer: 11_689_512 − 513_000,
    // 21_797_672 − 513_000, 25_557_032 − 2_049_000.
    for (backbone, keys, params) in [
        (Backbone::Resnet18, 100, 11_176_512),
        (Backbone::Resnet34, 180, 21_284_672),
        (Backbone::Resnet50, 265, 23_508_032),
    ] {
        let shapes = backbone_shapes(backbone);
        assert_eq!(shapes.len(), keys, "{backbone}");
        let n_params: usize = shapes
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(n_params, params, "{backbone}");
        assert!(shapes.keys().all(|k| !k.starts_with("fc.")));
        assert!(
            shapes
                .keys()
                .all(|k| vitrine::model::resnet::stage_of(k).is_some_and(|s| (1..=5).contains(&s)))
        );
    }

    let r18 = backbone_shapes(Backbone::Resnet18);
    for (name, shape) in [
        ("conv1.weight", vec![64, 3, 7, 7]),
        ("bn1.weight", vec![64]),
        ("bn1.bias", vec![64]),
        ("bn1.running_mean", vec![64]),
        ("bn1.running_var", vec![64]),
        ("layer1.0.conv1.weight", vec![64, 64, 3, 3]),
        ("layer1.1.bn2.running_var", vec![64]),
        ("layer2.0.conv1.weight", vec![128, 64, 3, 3]),
        ("layer2.0.downsample.0.weight", vec![128, 64, 1, 1]),
        ("layer2.0.downsample.1.running_mean", vec![128]),
        ("layer3.1.conv2.weight", vec![256, 256, 3, 3]),
        ("layer4.0.downsample.1.weight", vec![512]),
        ("layer4.1.bn2.bias", vec![512]),
    ] {
        assert_eq!(r18.get(name), Some(&shape), "resnet18 {name}");
    }
    for absent in [
        "layer1.0.downsample.0.weight",
        "layer2.1.downsample.0.weight",
        "fc.weight",
    ] {
        assert!(!r18.contains_key(absent), "resnet18 has {absent}");
    }

    let r50 = backbone_shapes(Backbone::Resnet50);
    for (name, shape) in [
        ("conv1.weight", vec![64, 3, 7, 7]),
        ("layer1.0.conv1.weight", vec![64, 64, 1, 1]),
        ("layer1.0.conv3.weight", vec![256, 64, 1, 1]),
        ("layer1.0.downsample.0.weight", vec![256, 64, 1, 1]),
        ("layer1.2.conv1.weight", vec![64, 256, 1, 1]),
        // v1.5: the stride sits on the 3×3 conv; the shapes pin the channels.
        ("layer2.0.conv2.weight", vec![128, 128, 3, 3]),
        ("layer3.5.bn3.weight", vec![1024]),
        ("layer4.0.downsample.0.weight", vec![2048, 1024, 1, 1]),
        ("layer4.2.conv3.weight", vec![2048, 512, 1, 1]),
        ("layer4.2.bn3.running_var", vec![2048]),
    ] {
        assert_eq!(r50.get(name), Some(&shape), "resnet50 {name}");
    }
    assert!(!r50.contains_key("layer1.1.downsample.0.weight"));

    // The embedder adds exactly the head.
    let (_, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 0), &CPU, 1).expect("embedder");
    assert_eq!(varmap.all_vars().len(), 102);
    assert_eq!(var(&varmap, "head.weight").dims(), &[512, 512]);
    assert_eq!(var(&varmap, "head.bias").dims(), &[512]);
}

/// Reference 3×3/2 max-pool with −∞ padding 1 and the gradient of `sum(output)`.
fn reference_pool(x: &[f32], (n, c, h, w): (usize, usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let mut out = vec![0.0; n * c * oh * ow];
    let mut grad = vec![0.0; x.len()];
    for p in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let mut best = (f32::NEG_INFINITY, 0);
                for di in 0..3 {
                    for dj in 0..3 {
                        let (y, xx) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                            continue;
                        }
                        let idx = p * h * w + y as usize * w + xx as usize;
                        if x[idx] > best.0 {
                            best = (x[idx], idx);
                        }
                    }
                }
                out[p * oh * ow + i * ow + j] = best.0;
                grad[best.1] += 1.0;
            }
        }
    }
    (out, grad)
}

#[test]
fn stem_max_pool_matches_candle_and_reference_and_has_gradients() {
    for (dims, seed) in [
        ((2, 3, 9, 8), 1),
        ((1, 2, 8, 7), 2),
        ((1, 1, 1, 2), 3),
        ((2, 4, 16, 16), 4),
    ] {
        let (n, c, h, w) = dims;
        // Post-ReLU-like input: non-negative, with exact zeros.
        let x = randn(&[n, c, h, w], seed).relu().expect("relu");
        let ours = max_pool_3x3_s2(&x).expect("pool");
        let candle = x
            .pad_with_zeros(2, 1, 1)
            .and_then(|t| t.pad_with_zeros(3, 1, 1))
            .and_then(|t| t.max_pool2d_with_stride(3, 2))
            .expect("candle pool");
        assert_eq!(ours.dims(), candle.dims(), "{dims:?}");
        assert_eq!(values(&ours), values(&candle), "{dims:?}");
        let (reference, _) = reference_pool(&values(&x), dims);
        assert_eq!(values(&ours), reference, "{dims:?}");
    }

    // Strictly positive input: no ties, so every output's gradient lands on its argmax.
    let dims = (2, 3, 9, 10);
    let x = Var::from_tensor(&(randn(&[2, 3, 9, 10], 5).abs().expect("abs") + 0.01).expect("add"))
        .expect("var");
    let y = max_pool_3x3_s2(x.as_tensor()).expect("pool");
    let grads = y.sum_all().expect("sum").backward().expect("backward");
    let g = grads
        .get(x.as_tensor())
        .expect("gradient reaches the input");
    let (_, expected) = reference_pool(&values(x.as_tensor()), dims);
    assert_eq!(values(g), expected);
}

#[test]
fn batchnorm_running_stats_update_in_train_mode_only() {
    let (model, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 0), &CPU, 2).expect("embedder");
    let x = randn(&[2, 3, 32, 32], 10);
    let watched = [
        "bn1.running_mean",
        "bn1.running_var",
        "layer4.1.bn2.running_var",
    ];
    let snapshot = || -> Vec<Vec<f32>> {
        watched
            .iter()
            .map(|n| values(var(&varmap, n).as_tensor()))
            .collect()
    };
    let before = snapshot();
    model.forward_t(&x, false).expect("eval forward");
    assert_eq!(snapshot(), before, "eval mode must not touch running stats");

    model.forward_t(&x, true).expect("train forward");
    let after = snapshot();
    for (i, name) in watched.iter().enumerate() {
        assert_ne!(after[i], before[i], "{name} did not update in the VarMap");
    }
    // Exactly torchvision's update: momentum 0.1, unbiased variance for running_var.
    let conv = x
        .conv2d(var(&varmap, "conv1.weight").as_tensor(), 3, 2, 1, 1)
        .expect("conv1");
    let per_channel = conv
        .transpose(0, 1)
        .expect("t")
        .flatten_from(1)
        .expect("flat");
    let count = per_channel.dim(1).expect("dim") as f32;
    let mean = values(&per_channel.mean(1).expect("mean"));
    let var_biased = values(
        &per_channel
            .broadcast_sub(&per_channel.mean_keepdim(1).expect("m"))
            .and_then(|t| t.sqr())
            .and_then(|t| t.mean(1))
            .expect("var"),
    );
    for ch in 0..64 {
        let rm = 0.1 * mean[ch];
        let rv = 0.9 + 0.1 * var_biased[ch] * count / (count - 1.0);
        assert!(
            (after[0][ch] - rm).abs() < 1e-4 * (1.0 + rm.abs()),
            "mean ch {ch}"
        );
        assert!((after[1][ch] - rv).abs() < 1e-3 * rv, "var ch {ch}");
    }

    // Frozen stages run eval-mode BatchNorm even when training.
    let (model, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 5), &CPU, 2).expect("embedder");
    let l1 = values(var(&varmap, "layer1.0.bn1.running_mean").as_tensor());
    let l4 = values(var(&varmap, "layer4.0.bn1.running_mean").as_tensor());
    model.forward_t(&x, true).expect("train forward");
    assert_eq!(
        values(var(&varmap, "layer1.0.bn1.running_mean").as_tensor()),
        l1
    );
    assert_ne!(
        values(var(&varmap, "layer4.0.bn1.running_mean").as_tensor()),
        l4
    );
}

fn assert_unit_rows(emb: &Tensor, n: usize, d: usize) {
    assert_eq!(emb.dims(), &[n, d]);
    let norms = values(&emb.sqr().and_then(|t| t.sum(1)).expect("norms"));
    for v in norms {
        assert!((v - 1.0).abs() < 1e-4, "squared norm {v}");
    }
}

#[test]
fn embeddings_are_unit_vectors_and_frozen_stages_get_no_gradient() {
    let x = randn(&[2, 3, 32, 32], 11);
    let mut c = cfg(Backbone::Resnet18, 5);
    c.embedding_dim = 64;
    c.dropout = 0.5;
    let (model, varmap) = Embedder::seeded(c, &CPU, 3).expect("embedder");
    assert_unit_rows(&model.embed(&x).expect("eval"), 2, 64);
    let emb = model.forward_t(&x, true).expect("train");
    assert_unit_rows(&emb, 2, 64);

    let loss = emb.narrow(1, 0, 1).and_then(|t| t.sum_all()).expect("loss");
    let grads = loss.backward().expect("backward");
    for name in [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer3.1.bn2.bias",
    ] {
        assert!(
            grads.get(var(&varmap, name).as_tensor()).is_none(),
            "{name} got a gradient"
        );
    }
    for name in [
        "layer4.0.conv1.weight",
        "layer4.1.bn2.weight",
        "head.weight",
        "head.bias",
    ] {
        let g = grads
            .get(var(&varmap, name).as_tensor())
            .unwrap_or_else(|| panic!("{name} got no gradient"));
        let norm = scalar(&g.sqr().and_then(|t| t.sum_all()).expect("norm"));
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name} gradient norm {norm}"
        );
    }

    // What the optimizer receives: layer4 and head parameters, no running stats.
    let names = model.trainable_names(&varmap);
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("layer4.") || n.starts_with("head."))
    );
    assert!(names.iter().all(|n| !n.contains("running")));
    // layer4 of resnet18: 5 convs + 5 BatchNorms (weight, bias), head weight + bias.
    assert_eq!(names.len(), 5 + 10 + 2);
    assert_eq!(model.trainable_vars(&varmap).len(), names.len());
    let groups = model.param_groups(&varmap);
    assert_eq!(groups.decay.len(), 6);
    assert_eq!(groups.no_decay.len(), 11);
    assert!(groups.decay.iter().all(|v| v.rank() >= 2));
    assert!(groups.no_decay.iter().all(|v| v.rank() == 1));

    // Training everything: the gradient flows back through the max-pool into the stem.
    let (model, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 0), &CPU, 3).expect("embedder");
    let emb = model.forward_t(&x, true).expect("train");
    let grads = emb
        .narrow(1, 0, 1)
        .and_then(|t| t.sum_all())
        .expect("loss")
        .backward()
        .expect("bw");
    let g = grads
        .get(var(&varmap, "conv1.weight").as_tensor())
        .expect("stem gradient");
    assert!(values(g).iter().all(|v| v.is_finite()) && values(g).iter().any(|&v| v != 0.0));
    // resnet18: 100 entries − 40 running stats = 60 parameters, + the head.
    assert_eq!(model.trainable_vars(&varmap).len(), 60 + 2);

    // Only the head.
    let (model, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 6), &CPU, 3).expect("embedder");
    assert_eq!(
        model.trainable_names(&varmap),
        vec!["head.bias", "head.weight"]
    );
    let emb = model.forward_t(&x, true).expect("train");
    let grads = emb.sum_all().expect("loss").backward().expect("bw");
    assert!(
        grads
            .get(var(&varmap, "layer4.1.conv2.weight").as_tensor())
            .is_none()
    );
    assert!(grads.get(var(&varmap, "head.weight").as_tensor()).is_some());

    // Bad configurations are errors, not panics.
    let bad = EmbedderConfig {
        train_from_stage: 7,
        ..cfg(Backbone::Resnet18, 0)
    };
    assert!(Embedder::seeded(bad, &CPU, 1).is_err());
    let bad = EmbedderConfig {
        dropout: 1.0,
        ..cfg(Backbone::Resnet18, 0)
    };
    assert!(Embedder::seeded(bad, &CPU, 1).is_err());
}

#[test]
fn seeded_init_is_deterministic() {
    let c = cfg(Backbone::Resnet18, 5);
    let (_, a) = Embedder::seeded(c, &CPU, 9).expect("a");
    let (_, b) = Embedder::seeded(c, &CPU, 9).expect("b");
    let (_, other) = Embedder::seeded(c, &CPU, 10).expect("c");
    let fa = checkpoint::fingerprint(&a).expect("fp");
    assert_eq!(fa, checkpoint::fingerprint(&b).expect("fp"));
    assert_ne!(fa, checkpoint::fingerprint(&other).expect("fp"));
    // torchvision's fan-out Kaiming normal for convs: std √(2 / (64·7·7)) for conv1.
    let w = values(var(&a, "conv1.weight").as_tensor());
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    let expected = (2.0f32 / (64.0 * 49.0)).sqrt();
    assert!(
        (std / expected - 1.0).abs() < 0.05,
        "conv1 std {std} vs {expected}"
    );
    assert!(
        values(var(&a, "bn1.weight").as_tensor())
            .iter()
            .all(|&v| v == 1.0)
    );
    assert!(
        values(var(&a, "bn1.running_var").as_tensor())
            .iter()
            .all(|&v| v == 1.0)
    );
    let bound = 1.0 / 512f32.sqrt();
    assert!(
        values(var(&a, "head.bias").as_tensor())
            .iter()
            .all(|v| v.abs() <= bound)
    );
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-4
}

fn points(xy: &[[f32; 2]]) -> Tensor {
    let flat: Vec<f32> = xy.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (xy.len(), 2), &CPU).expect("points")
}

#[test]
fn offline_loss_hand_computed() {
    // Triplet 1: d(a,p) = 5, d(a,n) = 1 → 5 − 1 + 0.5 = 4.5.
    // Triplet 2: d(a,p) = 1, d(a,n) = 2 → relu(−0.5) = 0.
    let emb = points(&[[0., 0.], [0., 0.], [3., 4.], [1., 0.], [0., 1.], [0., 2.]]);
    let stats = offline_triplet_loss(&emb, 0.5).expect("loss");
    assert!(close(scalar(&stats.loss), 2.25), "{}", scalar(&stats.loss));
    assert_eq!(stats.triplets, 2);
    assert!(close(stats.active, 0.5));
    assert!(close(stats.mean_ap, 3.0));
    assert!(close(stats.mean_an, 1.5));
    let via_config = TripletLoss::default().compute(&emb, &[]).expect("loss");
    assert!(close(scalar(&via_config.loss), 2.25));
    assert!(offline_triplet_loss(&points(&[[0., 0.], [1., 1.]]), 0.5).is_err());
}

/// Points on a line: labels [0, 0, 1, 1] at x = 0, 2, 1.4, 3, plus a lone label far away.
/// d01 = 2, d02 = 1.4, d03 = 3, d12 = 0.6, d13 = 1, d23 = 1.6.
fn line_batch() -> (Tensor, Vec<u64>) {
    let emb = points(&[[0., 0.], [2., 0.], [1.4, 0.], [3., 0.], [50., 0.]]);
    (emb, vec![0, 0, 1, 1, 2])
}

#[test]
fn batch_hard_loss_hand_computed() {
    let (emb, labels) = line_batch();
    let stats = online_triplet_loss(&emb, &labels, Mining::BatchHard, 0.5).expect("loss");
    // a0: 2 − 1.4 + .5 = 1.1; a1: 2 − 0.6 + .5 = 1.9; a2: 1.6 − 0.6 + .5 = 1.5;
    // a3: 1.6 − 1 + .5 = 1.1; a4 has no positive.
    assert_eq!(stats.triplets, 4);
    assert!(
        close(scalar(&stats.loss), 5.6 / 4.0),
        "{}",
        scalar(&stats.loss)
    );
    assert!(close(stats.active, 1.0));
    assert!(close(stats.mean_ap, 1.8));
    assert!(close(stats.mean_an, 0.9));
    assert!(online_triplet_loss(&emb, &labels[..3], Mining::BatchHard, 0.5).is_err());
}

#[test]
fn semi_hard_loss_hand_computed() {
    let (emb, labels) = line_batch();
    let loss = TripletLoss {
        margin: 0.5,
        mining: Mining::SemiHard,
        soft_margin: false,
    };
    let four = emb.narrow(0, 0, 4).expect("four");
    let stats = loss.compute(&four, &labels[..4]).expect("loss");
    // (0,1): negatives 1.4, 3 → first farther than 2 is 3 → 0.
    // (1,0): negatives 0.6, 1 → none farther → hardest 0.6 → 1.9.
    // (2,3): negatives 1.4, 0.6 → none farther than 1.6 → 0.6 → 1.5.
    // (3,2): negatives 3, 1 → 3 → 0.
    assert_eq!(stats.triplets, 4);
    assert!(
        close(scalar(&stats.loss), 3.4 / 4.0),
        "{}",
        scalar(&stats.loss)
    );
    assert!(close(stats.active, 0.5));
    assert!(close(stats.mean_ap, 1.8));
    assert!(close(stats.mean_an, (3.0 + 0.6 + 0.6 + 3.0) / 4.0));

    // With the far lone point, every anchor has a negative farther than its positive:
    // semi-hard picks it for (1,0) and (2,3), and nothing is active.
    let stats = loss.compute(&emb, &labels).expect("loss");
    assert_eq!(stats.triplets, 4);
    assert_eq!(scalar(&stats.loss), 0.0);
    assert!(close(stats.mean_an, (3.0 + 48.0 + 48.6 + 3.0) / 4.0));

    // No valid triplet: a zero loss, not an error.
    let stats = loss.compute(&emb, &[0, 1, 2, 3, 4]).expect("loss");
    assert_eq!(stats.triplets, 0);
    assert_eq!(scalar(&stats.loss), 0.0);
}

#[test]
fn loss_gradient_is_finite_when_anchor_equals_positive() {
    // Offline: anchor == positive.
    let x = Var::new(&[[0.3f32, 0.4], [0.3, 0.4], [0.3, 0.5]], &CPU).expect("var");
    let stats = offline_triplet_loss(x.as_tensor(), 0.5).expect("loss");
    assert!(close(scalar(&stats.loss), 0.4));
    let g = stats.loss.backward().expect("bw");
    let g = values(g.get(x.as_tensor()).expect("grad"));
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    // Online: two identical rows with the same label.
    let x = Var::new(&[[0.6f32, 0.8], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], &CPU).expect("var");
    for mining in [Mining::BatchHard, Mining::SemiHard] {
        let stats = online_triplet_loss(x.as_tensor(), &[1, 1, 2, 2], mining, 0.5).expect("loss");
        let g = stats.loss.backward().expect("bw");
        let g = values(g.get(x.as_tensor()).expect("grad"));
        assert!(g.iter().all(|v| v.is_finite()), "{mining:?} {g:?}");
    }
}

#[test]
fn sgd_steps_reduce_batch_hard_loss_on_a_toy_problem() {
    // 4 classes × 4 samples in 8-d: class centre + noise; a learnable 8→4 projection.
    let mut rng = Rng::new(21);
    let centres: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..8).map(|_| rng.normal()).collect())
        .collect();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (k, c) in centres.iter().enumerate() {
        for _ in 0..4 {
            rows.extend(c.iter().map(|v| v + 0.8 * rng.normal()));
            labels.push(k as u64);
        }
    }
    let x = Tensor::from_vec(rows, (16, 8), &CPU).expect("x");
    let w = Var::from_tensor(&(randn(&[8, 4], 22) * 0.3).expect("w")).expect("var");
    let mut sgd = SGD::new(vec![w.clone()], 0.2).expect("sgd");
    let loss_fn = TripletLoss {
        margin: 0.5,
        mining: Mining::BatchHard,
        soft_margin: false,
    };
    let step_loss = |sgd: Option<&mut SGD>| {
        let emb = l2_normalize(&x.matmul(w.as_tensor()).expect("mm")).expect("l2");
        let stats = loss_fn.compute(&emb, &labels).expect("loss");
        let value = scalar(&stats.loss);
        if let Some(sgd) = sgd {
            sgd.backward_step(&stats.loss).expect("step");
        }
        value
    };
    let first = step_loss(None);
    for _ in 0..40 {
        step_loss(Some(&mut sgd));
    }
    let last = step_loss(None);
    eprintln!("loss {first} → {last}");
    assert!(last < 0.7 * first, "loss {first} → {last}");
}

#[test]
fn adamw_steps_reduce_offline_loss_of_the_embedder() {
    let mut c = cfg(Backbone::Resnet18, 5);
    c.embedding_dim = 32;
    let (model, varmap) = Embedder::seeded(c, &CPU, 4).expect("embedder");
    // 4 triplets of 32×32 images: positives are noisy copies of their anchors, the
    // negatives noisy copies of the next anchor; margin 1 keeps every triplet active.
    let anchors = randn(&[4, 3, 32, 32], 30);
    let noisy =
        |seed| (&anchors + (randn(&[4, 3, 32, 32], seed) * 0.5).expect("noise")).expect("n");
    let positives = noisy(31);
    let next = Tensor::cat(
        &[
            &anchors.narrow(0, 1, 3).expect("n"),
            &anchors.narrow(0, 0, 1).expect("n"),
        ],
        0,
    )
    .expect("roll");
    let negatives = (&next + (randn(&[4, 3, 32, 32], 32) * 0.5).expect("noise")).expect("neg");
    let batch = Tensor::cat(&[&anchors, &positives, &negatives], 0).expect("batch");
    let params = ParamsAdamW {
        lr: 1e-3,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut opt = AdamW::new(model.trainable_vars(&varmap), params).expect("adamw");
    let mut losses = Vec::new();
    for _ in 0..6 {
        let emb = model.forward_t(&batch, true).expect("forward");
        let stats = offline_triplet_loss(&emb, 1.0).expect("loss");
        losses.push(scalar(&stats.loss));
        opt.backward_step(&stats.loss).expect("step");
    }
    let emb = model.forward_t(&batch, true).expect("forward");
    let last = scalar(&offline_triplet_loss(&emb, 1.0).expect("loss").loss);
    eprintln!("losses {losses:?} → {last}");
    assert!(last < 0.5 * losses[0], "losses {losses:?} → {last}");
}

#[test]
fn checkpoint_round_trip_is_exact_and_atomic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("checkpoints").join("last.safetensors");
    let c = cfg(Backbone::Resnet18, 5);
    let x = randn(&[2, 3, 32, 32], 40);
    let (model, varmap) = Embedder::seeded(c, &CPU, 5).expect("embedder");
    model
        .forward_t(&x, true)
        .expect("train forward moves BN stats");
    checkpoint::save(&varmap, &path).expect("save");
    let listing: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(listing, vec![std::ffi::OsString::from("last.safetensors")]);

    let (loaded_model, loaded) = Embedder::seeded(c, &CPU, 6).expect("embedder");
    let expected = values(&model.embed(&x).expect("embed"));
    assert_ne!(values(&loaded_model.embed(&x).expect("embed")), expected);
    let report = checkpoint::load_full(&loaded, &path).expect("load");
    assert_eq!(report.loaded, 102);
    assert!(report.ignored.is_empty());
    assert_eq!(values(&loaded_model.embed(&x).expect("embed")), expected);
    assert_eq!(
        checkpoint::fingerprint(&varmap).expect("fp"),
        checkpoint::fingerprint(&loaded).expect("fp")
    );
    let file_fp = checkpoint::fingerprint_file(&path).expect("fp");
    assert_eq!(file_fp.len(), 16);
    checkpoint::save(&loaded, &path).expect("save again");
    assert_eq!(checkpoint::fingerprint_file(&path).expect("fp"), file_fp);

    // Wrong architecture: a resnet18 file into a resnet34 model.
    let (_, r34) = Embedder::seeded(cfg(Backbone::Resnet34, 5), &CPU, 6).expect("r34");
    match checkpoint::load_full(&r34, &path) {
        Err(CheckpointError::Mismatch { missing, .. }) => {
            assert!(missing.contains(&"layer3.5.conv2.weight".to_owned()));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Not a checkpoint at all, or no file.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not safetensors").expect("write");
    assert!(matches!(
        checkpoint::load_full(&loaded, &junk),
        Err(CheckpointError::Format { .. })
    ));
    assert!(matches!(
        checkpoint::load_full(&loaded, &dir.path().join("nope.safetensors")),
        Err(CheckpointError::Io { .. })
    ));
}

/// A torchvision-style state_dict of `varmap`'s backbone: f16 for the convs, plus
/// `fc.*` and `num_batches_tracked` entries as torchvision writes them.
fn torchvision_state_dict(varmap: &VarMap) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (name, v) in varmap.data().lock().expect("lock").iter() {
        if name.starts_with("head.") {
            continue;
        }
        let t = v.as_tensor().copy().expect("copy");
        let t = if t.rank() == 4 {
            t.to_dtype(DType::F16).expect("f16")
        } else {
            t
        };
        if let Some(bn) = name.strip_suffix(".running_mean") {
            let nbt = Tensor::new(7i64, &CPU).expect("nbt");
            out.insert(format!("{bn}.num_batches_tracked"), nbt);
        }
        out.insert(name.clone(), t);
    }
    out.insert(
        "fc.weight".into(),
        Tensor::zeros((1000, 512), DType::F32, &CPU).expect("fc"),
    );
    out.insert(
        "fc.bias".into(),
        Tensor::zeros(1000, DType::F32, &CPU).expect("fc"),
    );
    out
}

#[test]
fn pretrained_torchvision_backbone_loads_and_mismatches_are_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(Backbone::Resnet18, 5);
    let (_, source) = Embedder::seeded(c, &CPU, 7).expect("source");
    let state = torchvision_state_dict(&source);
    let good = dir.path().join("resnet18.safetensors");
    candle_core::safetensors::save(&state, &good).expect("save");

    let (_, target) = Embedder::seeded(c, &CPU, 8).expect("target");
    let head_before = values(var(&target, "head.weight").as_tensor());
    let report = checkpoint::load_pretrained_backbone(&target, &good).expect("pretrained");
    assert_eq!(report.loaded, 100);
    assert_eq!(report.ignored.len(), 2 + 20);
    assert!(report.ignored.contains(&"fc.weight".to_owned()));
    assert!(
        report
            .ignored
            .contains(&"layer2.0.downsample.1.num_batches_tracked".to_owned())
    );
    for name in [
        "bn1.running_var",
        "layer3.0.bn2.weight",
        "layer4.1.conv2.weight",
    ] {
        let expected = state[name].to_dtype(DType::F32).expect("f32");
        assert_eq!(
            values(var(&target, name).as_tensor()),
            values(&expected),
            "{name}"
        );
    }
    assert_eq!(values(var(&target, "head.weight").as_tensor()), head_before);

    // The same file is not a full checkpoint: no head, and fc.* is unexpected there.
    match checkpoint::load_full(&target, &good) {
        Err(CheckpointError::Mismatch {
            missing,
            unexpected,
            ..
        }) => {
            assert_eq!(missing, vec!["head.bias", "head.weight"]);
            assert_eq!(unexpected, vec!["fc.bias", "fc.weight"]);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }

    // A broken export: one key missing, one mis-shaped, one unknown.
    let mut broken = state.clone();
    broken.remove("layer3.1.conv2.weight");
    broken.insert(
        "layer2.0.downsample.0.weight".into(),
        Tensor::zeros((128, 64, 3, 3), DType::F32, &CPU).expect("zeros"),
    );
    broken.insert(
        "layer5.0.conv1.weight".into(),
        Tensor::zeros((1, 1, 1, 1), DType::F32, &CPU).expect("zeros"),
    );
    let bad = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&broken, &bad).expect("save");
    let (_, fresh) = Embedder::seeded(c, &CPU, 9).expect("fresh");
    let before = checkpoint::fingerprint(&fresh).expect("fp");
    let err = checkpoint::load_pretrained_backbone(&fresh, &bad).expect_err("must fail");
    let message = err.to_string();
    match err {
        CheckpointError::Mismatch {
            path,
            missing,
            unexpected,
            mis_shaped,
            hint,
        } => {
            assert_eq!(path, bad);
            // Still a resnet18's blocks: no other backbone to suggest.
            assert_eq!(hint, None);
            assert_eq!(missing, vec!["layer3.1.conv2.weight"]);
            assert_eq!(unexpected, vec!["layer5.0.conv1.weight"]);
            assert_eq!(
                mis_shaped,
                vec![(
                    "layer2.0.downsample.0.weight".to_owned(),
                    vec![128, 64, 3, 3],
                    vec![128, 64, 1, 1]
                )]
            );
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    for name in [
        "broken.safetensors",
        "layer3.1.conv2.weight",
        "layer5.0.conv1.weight",
        "layer2.0.downsample.0.weight",
    ] {
        assert!(message.contains(name), "{name} not in: {message}");
    }
    assert_eq!(
        checkpoint::fingerprint(&fresh).expect("fp"),
        before,
        "failed load changed vars"
    );
}

/// `cargo test --release --test model -- --ignored --nocapture timing`
#[test]
#[ignore = "timing, run by hand"]
fn timing_resnet18_forward_backward() {
    let (model, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 0), &CPU, 1).expect("embedder");
    let x = randn(&[48, 3, 64, 64], 50);
    for stage in [0usize, 5] {
        let mut c = cfg(Backbone::Resnet18, stage);
        c.dropout = 0.0;
        let model = if stage == 0 {
            model.clone()
        } else {
            Embedder::new(c, VarBuilder::from_varmap(&varmap, DType::F32, &CPU)).expect("m")
        };
        for round in 0..2 {
            let t0 = std::time::Instant::now();
            let emb = model.forward_t(&x, true).expect("forward");
            let loss = offline_triplet_loss(&emb, 0.5).expect("loss").loss;
            let t1 = std::time::Instant::now();
            let grads = loss.backward().expect("backward");
            let t2 = std::time::Instant::now();
            drop(grads);
            println!(
                "resnet18 48x3x64x64 train_from_stage={stage} round {round}: forward {:.0} ms, backward {:.0} ms",
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3
            );
        }
        let t0 = std::time::Instant::now();
        model.embed(&x).expect("eval");
        println!("  eval forward {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
    }
}

/// How a test runs the backbone.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// Op by op through Candle's autograd, activations in this layout.
    PerOp(Channels),
    /// `forward_pooled`: on the CPU the whole backbone as one op.
    Pooled,
    /// `forward_pooled_deferred`: the same op, its parameter gradients added to the
    /// store after `backward`.
    Deferred,
}

/// `(pooled features, gradient of every variable, running statistics after)` of
/// `sum(pooled · r)` for a fresh seeded model (global pool exponent `gem_p`) run
/// along `path` in train mode.
#[allow(clippy::type_complexity)]
fn features_and_grads(
    backbone: Backbone,
    train_from_stage: usize,
    gem_p: f32,
    x: &Tensor,
    path: Path,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>, Vec<(String, Vec<f32>)>) {
    let cfg = EmbedderConfig {
        gem_p,
        ..cfg(backbone, train_from_stage)
    };
    let (model, varmap) = Embedder::seeded(cfg, &CPU, 7).expect("embedder");
    let net = model.backbone();
    let (pooled, deferred) = match path {
        Path::PerOp(layout) => net
            .forward_in(x, true, layout)
            .and_then(|f| generalized_mean(&f, gem_p))
            .map(|f| (f, None)),
        Path::Pooled => net.forward_pooled(x, true).map(|f| (f, None)),
        Path::Deferred => net.forward_pooled_deferred(x).map(|(f, d)| (f, Some(d))),
    }
    .expect("forward");
    let r = randn(pooled.dims(), 99);
    let mut grads = (&pooled * &r)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("backward");
    if let Some(deferred) = deferred {
        deferred.add_to(&mut grads).expect("deferred gradients");
    }
    let data = varmap.data().lock().expect("lock");
    let mut named: Vec<(String, Vec<f32>)> = data
        .iter()
        .filter_map(|(name, v)| grads.get(v.as_tensor()).map(|g| (name.clone(), values(g))))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut running: Vec<(String, Vec<f32>)> = data
        .iter()
        .filter(|(name, _)| name.contains("running"))
        .map(|(name, v)| (name.clone(), values(v.as_tensor())))
        .collect();
    running.sort_by(|a, b| a.0.cmp(&b.0));
    (values(&pooled), named, running)
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Runs `path` against the reference (channels-first, op by op) and compares the
/// pooled features, every gradient and the running statistics.
fn assert_same_network(path: Path) {
    // The 16-image case has enough tiles (16×16 and 8×8 maps) for the 3×3 convs'
    // gradients to run by Winograd; the last ones pool by generalised mean.
    for (backbone, stage, dims, gem_p) in [
        (Backbone::Resnet18, 0, [2, 3, 40, 36], 1.0),
        (Backbone::Resnet50, 0, [2, 3, 40, 36], 1.0),
        (Backbone::Resnet18, 4, [2, 3, 40, 36], 1.0),
        (Backbone::Resnet50, 5, [2, 3, 40, 36], 1.0),
        (Backbone::Resnet18, 0, [16, 3, 64, 64], 1.0),
        (Backbone::Resnet18, 0, [2, 3, 64, 72], 3.0),
        (Backbone::Resnet50, 4, [2, 3, 40, 36], 2.5),
    ] {
        let x = randn(&dims, 3);
        let (f_ref, g_ref, r_ref) =
            features_and_grads(backbone, stage, gem_p, &x, Path::PerOp(Channels::First));
        let (f, g, r) = features_and_grads(backbone, stage, gem_p, &x, path);
        let d = max_rel_diff(&f, &f_ref);
        assert!(
            d < 1e-4,
            "{backbone}/{stage}/p{gem_p} {path:?}: features differ by {d}"
        );
        assert_eq!(
            g_ref.iter().map(|g| &g.0).collect::<Vec<_>>(),
            g.iter().map(|g| &g.0).collect::<Vec<_>>(),
            "{backbone}/{stage}/p{gem_p} {path:?}: same variables get gradients"
        );
        // Frozen stages get none; every trainable one does.
        assert!(!g_ref.is_empty());
        assert!(
            g_ref
                .iter()
                .all(|(n, _)| stage == 0 || !n.starts_with("conv1"))
        );
        for ((name, a), (_, b)) in g.iter().zip(&g_ref) {
            let d = max_rel_diff(a, b);
            assert!(
                d < 1e-3,
                "{backbone}/{stage}/p{gem_p} {path:?}: gradient of {name} differs by {d}"
            );
        }
        for ((name, a), (_, b)) in r.iter().zip(&r_ref) {
            let d = max_rel_diff(a, b);
            assert!(
                d < 1e-4,
                "{backbone}/{stage}/p{gem_p} {path:?}: {name} differs by {d}"
            );
        }
    }
}

#[test]
fn channels_last_and_channels_first_compute_the_same_network() {
    assert_same_network(Path::PerOp(Channels::Last));
}

#[test]
fn whole_backbone_op_computes_the_same_network_and_gradients() {
    assert_same_network(Path::Pooled);
}

#[test]
fn deferred_backbone_gradients_are_the_graph_ones_bit_for_bit() {
    for (backbone, stage, gem_p) in [
        (Backbone::Resnet18, 0, 1.0),
        (Backbone::Resnet50, 0, 1.0),
        (Backbone::Resnet50, 5, 1.0),
        (Backbone::Resnet18, 6, 1.0),
        (Backbone::Resnet18, 0, 3.0),
    ] {
        let x = randn(&[3, 3, 40, 36], 8);
        let graph = features_and_grads(backbone, stage, gem_p, &x, Path::Pooled);
        let deferred = features_and_grads(backbone, stage, gem_p, &x, Path::Deferred);
        assert_eq!(graph.0, deferred.0, "{backbone}/{stage}/p{gem_p}: features");
        assert_eq!(
            graph.1, deferred.1,
            "{backbone}/{stage}/p{gem_p}: gradients"
        );
        assert_eq!(
            graph.2, deferred.2,
            "{backbone}/{stage}/p{gem_p}: running statistics"
        );
        assert_eq!(graph.1.is_empty(), stage == 6, "{backbone}/{stage}");
    }
    // Until they are added, the backbone's gradients are not in the store; the
    // embedder's training forward gives the same embeddings as `forward_t`.
    let (model, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 0), &CPU, 3).expect("embedder");
    let x = randn(&[4, 3, 32, 32], 9);
    model.set_dropout_stream(1, 0);
    let (emb, deferred) = model.forward_step(&x).expect("forward step");
    model.set_dropout_stream(1, 0);
    let reference = model.forward_t(&x, true).expect("forward_t");
    assert_eq!(values(&emb), values(&reference));
    let mut grads = emb.sum_all().and_then(|t| t.backward()).expect("backward");
    let w = var(&varmap, "conv1.weight");
    assert!(grads.get(w.as_tensor()).is_none());
    assert!(grads.get(var(&varmap, "head.weight").as_tensor()).is_some());
    deferred.add_to(&mut grads).expect("add");
    assert!(grads.get(w.as_tensor()).is_some());
}

#[test]
fn eval_mode_backbone_op_matches_the_per_op_path_with_its_inference_kernels() {
    // 32 images of 40×36: layer1's 10×9 maps make 288 tiles of 4×4 outputs, so its
    // 3×3 convs run Winograd F(4×4, 3×3) with BatchNorm + ReLU applied on the way out
    // (the per-op path: separate BatchNorm ops), and the stem's BatchNorm and ReLU run
    // in place.
    let x = randn(&[32, 3, 40, 36], 11);
    for backbone in [Backbone::Resnet18, Backbone::Resnet50] {
        let (model, _) = Embedder::seeded(cfg(backbone, 0), &CPU, 7).expect("embedder");
        let net = model.backbone();
        let reference = net
            .forward_in(&x, false, Channels::First)
            .and_then(|f| f.mean(3))
            .and_then(|f| f.mean(2))
            .expect("per-op forward");
        let pooled = net.forward_pooled(&x, false).expect("backbone op");
        let d = max_rel_diff(&values(&pooled), &values(&reference));
        assert!(d < 1e-4, "{backbone}: eval features differ by {d}");
    }
}

#[test]
fn whole_backbone_op_supports_a_second_backward_on_the_same_graph() {
    let (model, varmap) = Embedder::seeded(cfg(Backbone::Resnet18, 0), &CPU, 3).expect("embedder");
    let x = randn(&[2, 3, 32, 32], 4);
    let pooled = model.backbone().forward_pooled(&x, true).expect("forward");
    let loss = (&pooled * &randn(pooled.dims(), 5))
        .and_then(|t| t.sum_all())
        .expect("loss");
    let w = var(&varmap, "conv1.weight");
    let first = values(
        loss.backward()
            .expect("first")
            .get(w.as_tensor())
            .expect("grad"),
    );
    let second = values(
        loss.backward()
            .expect("second")
            .get(w.as_tensor())
            .expect("grad"),
    );
    assert_eq!(first, second);
    assert!(first.iter().any(|g| *g != 0.0));
}

/// Normalised images (as the loader makes them) of pixels `p` in `[0, 1]`, `(N, 3, S, S)`.
fn normalised(pixels: &[f32], n: usize, size: usize) -> Tensor {
    use vitrine::data::loader::{IMAGENET_MEAN, IMAGENET_STD};
    let plane = size * size;
    let v: Vec<f32> = pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let c = (i / plane) % 3;
            (p - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        })
        .collect();
    Tensor::from_vec(v, (n, 3, size, size), &CPU).expect("images")
}

#[test]
fn test_time_views_average_the_mirror_and_the_colour_negative() {
    let (n, size) = (3, 32);
    let mut rng = Rng::new(21);
    let pixels: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.f32()).collect();
    let negative: Vec<f32> = pixels.iter().map(|p| 1.0 - p).collect();
    let mirror = |px: &[f32]| -> Vec<f32> {
        let mut out = px.to_vec();
        for row in out.chunks_exact_mut(size) {
            row.reverse();
        }
        out
    };
    let views = [
        normalised(&pixels, n, size),
        normalised(&mirror(&pixels), n, size),
        normalised(&negative, n, size),
        normalised(&mirror(&negative), n, size),
    ];
    let base = cfg(Backbone::Resnet18, 0);
    let (plain, varmap) = Embedder::seeded(base, &CPU, 4).expect("embedder");
    let one = |i: usize| plain.embed(&views[i]).expect("embed");
    let expected = |ids: &[usize]| -> Vec<f32> {
        let sum = ids
            .iter()
            .map(|&i| one(i))
            .reduce(|a, b| (a + b).expect("sum"))
            .expect("views");
        values(&l2_normalize(&sum).expect("norm"))
    };
    for (flip, invert, ids) in [
        (true, false, &[0, 1][..]),
        (false, true, &[0, 2][..]),
        (true, true, &[0, 1, 2, 3][..]),
    ] {
        let cfg = EmbedderConfig {
            flip_average: flip,
            invert_average: invert,
            ..base
        };
        // Same weights: inference-only settings leave the weights' shape alone.
        assert_eq!(cfg.weights_shape(), base.weights_shape());
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
        let model = Embedder::new(cfg, vb).expect("same variables");
        let got = values(&model.embed(&views[0]).expect("embed"));
        let want = expected(ids);
        let d = max_rel_diff(&got, &want);
        assert!(d < 1e-5, "flip {flip} invert {invert}: differs by {d}");
        // And it is not the plain embedding.
        assert!(max_rel_diff(&got, &values(&one(0))) > 1e-3);
    }
}

/// An embedder with `base`'s seeded weights, and the same weights in bf16.
fn f32_and_bf16(base: EmbedderConfig) -> (Embedder, Embedder) {
    let (fp32, varmap) = Embedder::seeded(base, &CPU, 8).expect("embedder");
    let cfg = EmbedderConfig {
        precision: Precision::Bf16,
        ..base
    };
    assert_eq!(cfg.weights_shape(), base.weights_shape());
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    (fp32, Embedder::new(cfg, vb).expect("same variables"))
}

/// Each pair of embeddings within cosine 0.995, and not equal (the rounding ran).
fn assert_close_not_equal(a: &[f32], b: &[f32], what: &str) {
    for (i, (x, y)) in a.chunks_exact(512).zip(b.chunks_exact(512)).enumerate() {
        let cos: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        assert!(cos > 0.995, "{what}, image {i}: cosine {cos}");
    }
    assert!(max_rel_diff(a, b) > 1e-4, "{what}: no rounding");
}

#[test]
fn bf16_embeddings_and_training_forwards_stay_close_to_the_f32_ones() {
    let (n, size) = (4, 64);
    let mut rng = Rng::new(33);
    let pixels: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.f32()).collect();
    let images = normalised(&pixels, n, size);
    let (fp32, bf16) = f32_and_bf16(cfg(Backbone::Resnet18, 0));
    let a = values(&fp32.embed(&images).expect("f32"));
    let b = values(&bf16.embed(&images).expect("bf16"));
    assert_close_not_equal(&a, &b, "ResNet18");
    // Training's forward (batch statistics) rounds the same way.
    let ta = values(&fp32.forward_t(&images, true).expect("train f32"));
    let tb = values(&bf16.forward_t(&images, true).expect("train bf16"));
    assert_close_not_equal(&ta, &tb, "training forward");
    // Bottleneck blocks and their strided projections too (inference keeps the
    // activations bf16 from layer to layer, shortcuts included).
    let (fp32, bf16) = f32_and_bf16(cfg(Backbone::Resnet50, 0));
    let a = values(&fp32.embed(&images).expect("f32"));
    let b = values(&bf16.embed(&images).expect("bf16"));
    assert_close_not_equal(&a, &b, "ResNet50");
}
