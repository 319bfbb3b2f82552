//! Collapse detection on real batches of embeddings: unit vectors crowding around one
//! direction raise the notice, a healthy spread never does.

use vitrine::model::loss::mean_pairwise_cosine;
use vitrine::rng::Rng;
use vitrine::train::collapse::{CollapseChange, CollapseMonitor, StepSignals, WINDOW};

/// `n` unit rows of `d` dims: around one shared direction (`noise` small) or random.
fn batch(rng: &mut Rng, n: usize, d: usize, around: Option<&[f32]>, noise: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let row: Vec<f32> = (0..d)
            .map(|j| around.map_or(0.0, |c| c[j]) + noise * rng.normal())
            .collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        out.extend(row.iter().map(|v| v / norm));
    }
    out
}

fn run(
    monitor: &mut CollapseMonitor,
    steps: usize,
    make: &mut dyn FnMut() -> Vec<f32>,
) -> Vec<CollapseChange> {
    (0..steps)
        .filter_map(|_| {
            let spread = mean_pairwise_cosine(&make(), 64);
            monitor.observe(StepSignals {
                spread,
                d_ap: 0.5,
                d_an: 0.9,
                loss: 3.0,
                margin: None,
            })
        })
        .collect()
}

#[test]
fn the_notice_fires_on_a_collapsed_embedding_only() {
    let mut rng = Rng::new(3);
    let centre = batch(&mut rng, 1, 64, None, 1.0);
    // Healthy: 200 steps of random unit vectors (mean cosine ≈ 0).
    let mut healthy = CollapseMonitor::default();
    let mut r = Rng::new(4);
    let changes = run(&mut healthy, 200, &mut || batch(&mut r, 48, 64, None, 1.0));
    assert!(changes.is_empty(), "{changes:?}");
    // Half-way (mean cosine ≈ 0.5, a tight but not collapsed batch): still quiet.
    let mut tight = CollapseMonitor::default();
    let mut r = Rng::new(5);
    let changes = run(&mut tight, 200, &mut || {
        batch(&mut r, 48, 64, Some(&centre), 0.125)
    });
    assert!(changes.is_empty(), "{changes:?}");
    // Collapsed: every image within a few degrees of one direction.
    let mut collapsed = CollapseMonitor::default();
    let mut r = Rng::new(6);
    let changes = run(&mut collapsed, 200, &mut || {
        batch(&mut r, 48, 64, Some(&centre), 0.01)
    });
    assert_eq!(changes.len(), 1, "{changes:?}");
    match &changes[0] {
        CollapseChange::Collapsed(m) => {
            assert!(m.contains("collapsing") && m.contains("README"), "{m}");
        }
        other @ CollapseChange::Recovered(_) => panic!("{other:?}"),
    }
    // And it reports the recovery once the batch spreads again.
    let mut r = Rng::new(7);
    let changes = run(&mut collapsed, WINDOW, &mut || {
        batch(&mut r, 48, 64, None, 1.0)
    });
    assert!(
        matches!(changes.as_slice(), [CollapseChange::Recovered(_)]),
        "{changes:?}"
    );
}
