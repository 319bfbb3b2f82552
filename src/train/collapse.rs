//! Collapse detection: every step reports the mean cosine between the batch's
//! embeddings (the *spread*); a run whose embeddings all point the same way, or whose
//! triplet loss sits at the margin with d(a,n) ≈ d(a,p), has stopped learning anything
//! useful, and the user should hear it from the run, not from the search results.

use std::collections::VecDeque;

/// Steps a condition must hold before it is reported.
pub const WINDOW: usize = 50;
/// Mean cosine above which a batch counts as collapsed (d ≈ 0.45 between unit vectors).
pub const SPREAD_COLLAPSED: f32 = 0.9;
/// Mean cosine below which a collapse is over (hysteresis against flapping).
pub const SPREAD_RECOVERED: f32 = 0.8;

/// One step's signals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSignals {
    /// Mean pairwise cosine of the batch's embeddings.
    pub spread: f32,
    pub d_ap: f32,
    pub d_an: f32,
    /// The loss, and the triplet margin when the loss is a triplet hinge.
    pub loss: f32,
    pub margin: Option<f32>,
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum CollapseChange {
    Collapsed(String),
    Recovered(String),
}

/// Watches a window of steps; reports entering and leaving a collapse once each.
#[derive(Debug, Clone, Default)]
pub struct CollapseMonitor {
    window: VecDeque<StepSignals>,
    collapsed: bool,
}

impl CollapseMonitor {
    pub fn is_collapsed(&self) -> bool {
        self.collapsed
    }

    pub fn observe(&mut self, s: StepSignals) -> Option<CollapseChange> {
        if !s.spread.is_finite() {
            return None;
        }
        self.window.push_back(s);
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
        if self.window.len() < WINDOW {
            return None;
        }
        let n = self.window.len() as f32;
        let mean = |f: fn(&StepSignals) -> f32| self.window.iter().map(f).sum::<f32>() / n;
        let spread = mean(|s| s.spread);
        let gap = mean(|s| s.d_an - s.d_ap);
        let stuck = s.margin.is_some_and(|m| {
            let loss = mean(|s| s.loss);
            gap.abs() < 0.02 && (loss - m).abs() < 0.05 * m
        });
        if !self.collapsed && (spread > SPREAD_COLLAPSED || stuck) {
            self.collapsed = true;
            let what = if spread > SPREAD_COLLAPSED {
                format!(
                    "the embeddings are collapsing: mean cosine between a batch's images {spread:.3} over the last {WINDOW} steps (healthy runs stay well below {SPREAD_COLLAPSED})"
                )
            } else {
                format!(
                    "training is stuck: d(a,n) − d(a,p) = {gap:.3} with the loss at the margin over the last {WINDOW} steps"
                )
            };
            return Some(CollapseChange::Collapsed(format!(
                "{what}; search results will be unrelated images. Try loss.kind = \"norm_softmax\" or \"multi_similarity\", model.bnneck = true, or a lower learning rate (README: \"When training collapses\")"
            )));
        }
        if self.collapsed && spread < SPREAD_RECOVERED && !stuck {
            self.collapsed = false;
            return Some(CollapseChange::Recovered(format!(
                "the embeddings spread again: mean cosine {spread:.3} over the last {WINDOW} steps"
            )));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(spread: f32, d_ap: f32, d_an: f32, loss: f32) -> StepSignals {
        StepSignals {
            spread,
            d_ap,
            d_an,
            loss,
            margin: Some(0.5),
        }
    }

    #[test]
    fn reports_a_stuck_triplet_loss_once() {
        let mut m = CollapseMonitor::default();
        let changes: Vec<_> = (0..200)
            .filter_map(|_| m.observe(step(0.5, 0.60, 0.605, 0.499)))
            .collect();
        assert_eq!(changes.len(), 1);
        assert!(matches!(&changes[0], CollapseChange::Collapsed(s) if s.contains("stuck")));
    }

    #[test]
    fn needs_a_full_window_and_recovers_with_hysteresis() {
        let mut m = CollapseMonitor::default();
        for _ in 0..WINDOW - 1 {
            assert_eq!(m.observe(step(0.99, 0.1, 0.1, 0.5)), None);
        }
        assert!(matches!(
            m.observe(step(0.99, 0.1, 0.1, 0.5)),
            Some(CollapseChange::Collapsed(_))
        ));
        // Between the thresholds: still collapsed, nothing new said.
        for _ in 0..WINDOW {
            assert_eq!(m.observe(step(0.85, 0.3, 0.9, 0.2)), None);
        }
        assert!(m.is_collapsed());
        let recovered = (0..WINDOW).find_map(|_| m.observe(step(0.2, 0.3, 0.9, 0.2)));
        assert!(matches!(recovered, Some(CollapseChange::Recovered(_))));
        assert!(!m.is_collapsed());
    }
}
