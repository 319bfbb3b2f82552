//! The Triplets tab's state: the sampler's training triplets, their distances and
//! loss under the newest checkpoint, the category filter and the order.

use super::dataset::TripletRow;
use super::moved;

/// Distances between unit embeddings and the triplet loss under a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripletScore {
    pub d_ap: f32,
    pub d_an: f32,
    pub loss: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScoreStatus {
    Idle,
    Running {
        weights: String,
        done: usize,
        total: usize,
    },
    Done {
        weights: String,
    },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TripletsState {
    pub rows: Vec<TripletRow>,
    pub scores: Vec<Option<TripletScore>>,
    /// Rows shown, in order (filter and ordering applied).
    pub view: Vec<usize>,
    /// Index into `view`.
    pub selected: usize,
    /// Small categories present, sorted.
    pub categories: Vec<String>,
    /// Index into `categories`.
    pub filter: Option<usize>,
    /// Largest loss first.
    pub hardest: bool,
    pub status: ScoreStatus,
    /// Newest checkpoint step (from the events) when the scores were asked for
    /// (`Some(None)`: there was none); a newer checkpoint asks again.
    pub scored_for: Option<Option<usize>>,
}

impl Default for TripletsState {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            scores: Vec::new(),
            view: Vec::new(),
            selected: 0,
            categories: Vec::new(),
            filter: None,
            hardest: false,
            status: ScoreStatus::Idle,
            scored_for: None,
        }
    }
}

impl TripletsState {
    fn rebuild_view(&mut self) {
        let keep = self.view.get(self.selected).copied();
        let cat = self.filter.and_then(|f| self.categories.get(f));
        self.view = (0..self.rows.len())
            .filter(|&i| cat.is_none_or(|c| &self.rows[i].anchor.category == c))
            .collect();
        if self.hardest {
            let loss = |i: usize| self.scores.get(i).copied().flatten().map(|s| s.loss);
            // Scored rows by loss (largest first), unscored ones after, stable.
            self.view.sort_by(|&a, &b| match (loss(a), loss(b)) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
        }
        self.selected = keep
            .and_then(|k| self.view.iter().position(|&v| v == k))
            .unwrap_or(0);
    }

    pub fn selected_row(&self) -> Option<(usize, &TripletRow)> {
        let i = *self.view.get(self.selected)?;
        Some((i, &self.rows[i]))
    }

    /// Mean loss and share of active triplets among the scored rows in view.
    pub fn summary(&self) -> Option<(f32, f32, usize)> {
        let scored: Vec<TripletScore> = self
            .view
            .iter()
            .filter_map(|&i| self.scores.get(i).copied().flatten())
            .collect();
        if scored.is_empty() {
            return None;
        }
        let n = scored.len() as f32;
        let mean = scored.iter().map(|s| s.loss).sum::<f32>() / n;
        let active = scored.iter().filter(|s| s.loss > 0.0).count() as f32 / n;
        Some((mean, active, scored.len()))
    }

    /// A fresh tab over `rows`, unscored; the filter offers the anchors' categories.
    pub fn new(rows: Vec<TripletRow>) -> Self {
        let mut categories: Vec<String> = rows.iter().map(|t| t.anchor.category.clone()).collect();
        categories.sort();
        categories.dedup();
        let mut state = Self {
            scores: vec![None; rows.len()],
            rows,
            categories,
            ..Self::default()
        };
        state.rebuild_view();
        state
    }

    /// Moves the selection by `by` rows.
    pub fn step(&mut self, by: isize) {
        self.selected = moved(self.selected, by, self.view.len());
    }

    /// `f` / `F`: the next or previous small category, through "all".
    pub fn cycle_filter(&mut self, forward: bool) {
        let n = self.categories.len();
        if n == 0 {
            return;
        }
        // None → 0 → … → n-1 → None.
        let cur = self.filter.map_or(n, |f| f);
        let next = if forward {
            (cur + 1) % (n + 1)
        } else {
            (cur + n) % (n + 1)
        };
        self.filter = (next < n).then_some(next);
        self.rebuild_view();
    }

    /// `o`: the sampler's order or the hardest (largest loss) first.
    /// Hardest first starts at the hardest row; back to listing order keeps the row.
    pub fn toggle_hardest(&mut self) {
        self.hardest = !self.hardest;
        self.rebuild_view();
        if self.hardest {
            self.selected = 0;
        }
    }

    /// A batch of scores from the scoring worker.
    pub fn apply_scores(
        &mut self,
        weights: String,
        scores: Vec<(usize, TripletScore)>,
        done: usize,
        total: usize,
    ) {
        for (i, s) in scores {
            if let Some(slot) = self.scores.get_mut(i) {
                *slot = Some(s);
            }
        }
        self.status = if done >= total {
            ScoreStatus::Done { weights }
        } else {
            ScoreStatus::Running {
                weights,
                done,
                total,
            }
        };
        if self.hardest {
            self.rebuild_view();
        }
    }

    /// Whether the rows should be scored (again) under the newest checkpoint
    /// `latest`; if so they are marked as being scored.
    pub fn ask_scores(&mut self, latest: Option<usize>) -> bool {
        if self.rows.is_empty()
            || matches!(self.status, ScoreStatus::Running { .. })
            || self.scored_for == Some(latest)
        {
            return false;
        }
        self.scored_for = Some(latest);
        self.status = ScoreStatus::Running {
            weights: "…".into(),
            done: 0,
            total: self.rows.len(),
        };
        true
    }
}
