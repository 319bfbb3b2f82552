//! Collapse detection: every step reports the mean cosine between the batch's
//! embeddings (the *spread*); a run whose embeddings all point the same way, or whose
//! triplet loss sits at the margin with d(a,n) ≈ d(a,p), has stopped learning anything
//! useful, and the user should hear it from the run, not from the search results.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::events::{NoticeKind, TrainEvent};
use crate::model::loss::{LossConfig, LossKind};

/// Steps a condition must hold before it is reported.
pub const WINDOW: usize = 50;
/// Mean cosine above which a batch counts as collapsed (d ≈ 0.45 between unit vectors).
pub const SPREAD_COLLAPSED: f32 = 0.9;
/// Mean cosine below which a collapse is over (hysteresis against flapping).
pub const SPREAD_RECOVERED: f32 = 0.8;

/// One step's signals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepSignals {
    /// Mean pairwise cosine of the batch's embeddings.
    pub spread: f32,
    pub d_ap: f32,
    pub d_an: f32,
    /// The loss, and the triplet margin when the loss is a triplet hinge.
    pub loss: f32,
    pub margin: Option<f32>,
}

impl StepSignals {
    /// The margin the stuck check holds the loss to: a triplet hinge's, none for a
    /// soft margin or another loss.
    pub fn hinge_margin(loss: &LossConfig) -> Option<f32> {
        (loss.kind == LossKind::Triplet && !loss.soft_margin).then_some(loss.margin)
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum CollapseChange {
    Collapsed(String),
    Recovered(String),
}

/// Gap d(a,n) − d(a,p) below which a triplet loss at its margin counts as stuck, and
/// above which it counts as moving again.
pub const GAP_STUCK: f32 = 0.02;
pub const GAP_MOVING: f32 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    #[default]
    Healthy,
    /// Every image maps near one point.
    Collapsed,
    /// A triplet loss at its margin with d(a,n) ≈ d(a,p).
    Stuck,
}

/// Watches a window of steps; reports entering and leaving a collapse once each, with
/// hysteresis so a run near a threshold does not flap. Saved in checkpoints, so a
/// resumed run goes on from the same window and state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CollapseMonitor {
    window: VecDeque<StepSignals>,
    state: State,
    /// What was said when the current collapse began.
    warning: Option<String>,
}

impl CollapseMonitor {
    pub fn is_collapsed(&self) -> bool {
        self.state != State::Healthy
    }

    /// The warning of the collapse in progress, if any.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    pub fn observe(&mut self, s: StepSignals) -> Option<CollapseChange> {
        let change = self.assess(s);
        match &change {
            Some(CollapseChange::Collapsed(m)) => self.warning = Some(m.clone()),
            Some(CollapseChange::Recovered(_)) => self.warning = None,
            None => {}
        }
        change
    }

    /// [`Self::observe`], a change said as the notice a run emits at `step` (and
    /// logs as a warning).
    pub fn notice(&mut self, step: usize, s: StepSignals) -> Option<TrainEvent> {
        let (message, kind) = match self.observe(s)? {
            CollapseChange::Collapsed(m) => (m, NoticeKind::Collapse),
            CollapseChange::Recovered(m) => (m, NoticeKind::CollapseCleared),
        };
        tracing::warn!("{message}");
        Some(TrainEvent::Notice {
            step,
            message,
            kind: Some(kind),
        })
    }

    fn assess(&mut self, s: StepSignals) -> Option<CollapseChange> {
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
        let loss = mean(|s| s.loss);
        let at_margin = s.margin.is_some_and(|m| (loss - m).abs() < 0.05 * m);
        let advice = "search results will be unrelated images. Try loss.kind = \"norm_softmax\", model.bnneck = true, or a lower learning rate (README: \"When training collapses\")";
        match self.state {
            State::Healthy if spread > SPREAD_COLLAPSED => {
                self.state = State::Collapsed;
                Some(CollapseChange::Collapsed(format!(
                    "the embeddings are collapsing: mean cosine between a batch's images {spread:.3} over the last {WINDOW} steps (healthy runs stay well below {SPREAD_COLLAPSED}); {advice}"
                )))
            }
            State::Healthy if at_margin && gap.abs() < GAP_STUCK => {
                self.state = State::Stuck;
                Some(CollapseChange::Collapsed(format!(
                    "training is stuck: d(a,n) − d(a,p) = {gap:.3} with the loss at the margin over the last {WINDOW} steps; {advice}"
                )))
            }
            State::Collapsed if spread < SPREAD_RECOVERED => {
                self.state = State::Healthy;
                Some(CollapseChange::Recovered(format!(
                    "the embeddings spread again: mean cosine {spread:.3} over the last {WINDOW} steps"
                )))
            }
            State::Stuck if gap > GAP_MOVING || !at_margin => {
                self.state = State::Healthy;
                Some(CollapseChange::Recovered(format!(
                    "training moves again: d(a,n) − d(a,p) = {gap:.3}, loss {loss:.3} over the last {WINDOW} steps"
                )))
            }
            _ => None,
        }
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
    fn a_change_is_said_as_a_notice_of_its_step() {
        let mut m = CollapseMonitor::default();
        let notices: Vec<_> = (0..WINDOW)
            .filter_map(|i| m.notice(i + 1, step(0.99, 0.1, 0.1, 0.5)))
            .collect();
        assert!(
            matches!(&notices[..], [TrainEvent::Notice { step, kind: Some(NoticeKind::Collapse), .. }] if *step == WINDOW),
            "{notices:?}"
        );
        let cleared = (0..WINDOW).find_map(|i| m.notice(i, step(0.2, 0.3, 0.9, 0.2)));
        assert!(
            matches!(
                cleared,
                Some(TrainEvent::Notice {
                    kind: Some(NoticeKind::CollapseCleared),
                    ..
                })
            ),
            "{cleared:?}"
        );
    }

    #[test]
    fn only_a_triplet_hinge_has_a_margin() {
        let mut loss = LossConfig {
            kind: LossKind::Triplet,
            ..LossConfig::default()
        };
        assert_eq!(StepSignals::hinge_margin(&loss), Some(loss.margin));
        loss.soft_margin = true;
        assert_eq!(StepSignals::hinge_margin(&loss), None);
        loss.soft_margin = false;
        loss.kind = LossKind::NormSoftmax;
        assert_eq!(StepSignals::hinge_margin(&loss), None);
    }

    #[test]
    fn a_stuck_loss_near_the_threshold_does_not_flap() {
        let mut m = CollapseMonitor::default();
        let mut said = Vec::new();
        // The gap wanders around the entry threshold, below the exit one.
        for i in 0..400 {
            let gap = if i % 2 == 0 { 0.005 } else { 0.03 };
            said.extend(m.observe(step(0.4, 0.6, 0.6 + gap, 0.49)));
        }
        assert_eq!(said.len(), 1, "{said:?}");
        // Moving clearly again ends it, with a message about the gap, not the spread.
        let moved = (0..WINDOW).find_map(|_| m.observe(step(0.4, 0.5, 0.7, 0.3)));
        assert!(
            matches!(&moved, Some(CollapseChange::Recovered(s)) if s.contains("moves again")),
            "{moved:?}"
        );
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
