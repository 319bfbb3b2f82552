//! When the trainer writes its checkpoints: `last` every `checkpoint_every` steps, at
//! every epoch's end and when the run stops (once per step); `best` whenever val
//! top-20 improves on the best so far.

use crate::eval::Retrieval;

#[derive(Debug, Clone, Default)]
pub struct CheckpointPolicy {
    /// Steps between `last` checkpoints inside an epoch (0 = only at epoch ends).
    every: usize,
    best_top20: Option<f64>,
    last_written_at: Option<usize>,
}

impl CheckpointPolicy {
    /// `best_top20`: the best so far (a resumed run's, from its checkpoint).
    pub fn new(every: usize, best_top20: Option<f64>) -> Self {
        Self {
            every,
            best_top20,
            last_written_at: None,
        }
    }

    /// Whether a periodic `last` is due after `step`.
    pub fn last_due(&self, step: usize) -> bool {
        self.every > 0 && step.is_multiple_of(self.every)
    }

    /// Whether `last` still has to be written at `step` (not written there yet).
    pub fn last_missing(&self, step: usize) -> bool {
        self.last_written_at != Some(step)
    }

    pub fn last_written(&mut self, step: usize) {
        self.last_written_at = Some(step);
    }

    /// Records a validation; true when it beats the best so far (write `best`).
    pub fn improves_best(&mut self, val: Option<&Retrieval>) -> bool {
        let Some(top20) = val.map(|v| v.at(20)) else {
            return false;
        };
        let improved = self.best_top20.is_none_or(|best| top20 > best);
        if improved {
            self.best_top20 = Some(top20);
        }
        improved
    }

    pub fn best_top20(&self) -> Option<f64> {
        self.best_top20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(top20: f64) -> Retrieval {
        Retrieval {
            queries: 1,
            gallery: 1,
            top_k: [(20, top20)].into_iter().collect(),
            map_at_r: 0.0,
            without_match: 0,
        }
    }

    #[test]
    fn best_is_written_on_improvement_and_last_once_per_step() {
        let mut p = CheckpointPolicy::new(5, None);
        assert!(!p.last_due(3) && p.last_due(10));
        assert!(p.improves_best(Some(&val(0.5))));
        assert!(!p.improves_best(Some(&val(0.5))));
        assert!(!p.improves_best(None));
        assert!(p.improves_best(Some(&val(0.6))));
        assert_eq!(p.best_top20(), Some(0.6));
        assert!(p.last_missing(7));
        p.last_written(7);
        assert!(!p.last_missing(7));
        assert!(!CheckpointPolicy::new(0, None).last_due(10));
        assert!(!CheckpointPolicy::new(1, Some(0.9)).improves_best(Some(&val(0.8))));
    }
}
