//! The Search tab's failures view: every test query ordered by the rank of its item's
//! best gallery image (worst first), with the images ranked ahead of it, and top-1 /
//! top-20 per small category. Computed by [`crate::tui::workers::failures`] with the
//! search worker's model and index.

use std::path::PathBuf;

use super::dataset::ImageInfo;
use super::moved;
use crate::index::evaluate::CategoryScore;

/// A gallery image in the view.
#[derive(Debug, Clone, PartialEq)]
pub struct GalleryHit {
    /// 1-based rank in the exact ranking of the query.
    pub rank: usize,
    pub path: PathBuf,
    pub item_id: String,
    /// `BIG/Small`.
    pub category: String,
    /// Cosine similarity with the query.
    pub score: f32,
}

/// One query and where its item landed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRow {
    pub query: ImageInfo,
    /// Rank of the item's best gallery image; `None` when the gallery has none.
    pub rank: Option<usize>,
    /// That gallery image.
    pub true_hit: Option<GalleryHit>,
    /// The images ranked ahead of it (at most [`crate::index::evaluate::FAILURE_SHOWN`];
    /// the first ones of the ranking when the item has no gallery image).
    pub ahead: Vec<GalleryHit>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailuresReport {
    /// Every readable query, worst first.
    pub rows: Vec<FailureRow>,
    /// Per small category, worst top-20 first.
    pub categories: Vec<CategoryScore>,
    /// Gallery images in the index.
    pub gallery: usize,
    /// Queries that could not be read (not listed).
    pub unreadable: usize,
    pub seconds: f64,
}

impl FailuresReport {
    /// Share of the listed queries whose item is within the first `k`.
    pub fn top(&self, k: usize) -> f64 {
        if self.rows.is_empty() {
            return 0.0;
        }
        let n = self
            .rows
            .iter()
            .filter(|r| r.rank.is_some_and(|r| r <= k))
            .count();
        n as f64 / self.rows.len() as f64
    }
}

/// What the failures worker reports for one request.
#[derive(Debug, Clone)]
pub enum FailuresUpdate {
    /// Queries embedded so far.
    Progress {
        done: usize,
        total: usize,
    },
    Done(Result<FailuresReport, String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum FailuresStatus {
    /// Not computed for the current index (asked when the view is open).
    NotAsked,
    Computing {
        done: usize,
        total: usize,
    },
    Ready(FailuresReport),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailuresState {
    /// The view is shown instead of the query list and the result grid.
    pub open: bool,
    /// The per-category table instead of the selected query's pictures.
    pub categories: bool,
    pub status: FailuresStatus,
    /// Selected row of the list.
    pub selected: usize,
    /// Selected row of the per-category table.
    pub category: usize,
    /// The newest request; answers to older ones (another index) are dropped.
    pub token: u64,
}

impl Default for FailuresState {
    fn default() -> Self {
        Self {
            open: false,
            categories: false,
            status: FailuresStatus::NotAsked,
            selected: 0,
            category: 0,
            token: 0,
        }
    }
}

impl FailuresState {
    /// `f`: opens the view (a failed computation is tried again), or closes it.
    pub fn toggle(&mut self) {
        self.open = !self.open;
        if self.open && matches!(self.status, FailuresStatus::Failed(_)) {
            self.status = FailuresStatus::NotAsked;
        }
    }

    /// `c`: the per-category table or the selected query's pictures.
    pub fn toggle_categories(&mut self) {
        if self.open {
            self.categories = !self.categories;
        }
    }

    /// Esc: closes the per-category table, else the view.
    pub fn back(&mut self) {
        if self.categories {
            self.categories = false;
        } else {
            self.open = false;
        }
    }

    pub fn report(&self) -> Option<&FailuresReport> {
        match &self.status {
            FailuresStatus::Ready(r) => Some(r),
            _ => None,
        }
    }

    pub fn selected_row(&self) -> Option<&FailureRow> {
        self.report()?.rows.get(self.selected)
    }

    /// Up/Down (and pages) in the list, or in the per-category table when shown.
    pub fn step(&mut self, by: isize) {
        let Some(r) = self.report() else { return };
        if self.categories {
            let n = r.categories.len();
            self.category = moved(self.category, by, n);
        } else {
            let n = r.rows.len();
            self.selected = moved(self.selected, by, n);
        }
    }

    /// The token of a computation to start now: the view is open, nothing is computed
    /// for the current index, and there is something to compute with.
    pub fn ask(&mut self, index_ready: bool, have_queries: bool) -> Option<u64> {
        if !(self.open && index_ready && have_queries && self.status == FailuresStatus::NotAsked) {
            return None;
        }
        self.token += 1;
        self.status = FailuresStatus::Computing { done: 0, total: 0 };
        Some(self.token)
    }

    /// A new index: what was computed is stale, and so is anything in flight.
    pub fn index_changed(&mut self) {
        self.token += 1;
        self.status = FailuresStatus::NotAsked;
    }

    /// The worker's report on request `token`.
    pub fn apply(&mut self, token: u64, update: FailuresUpdate) {
        if token != self.token {
            return;
        }
        self.status = match update {
            FailuresUpdate::Progress { done, total } => FailuresStatus::Computing { done, total },
            FailuresUpdate::Done(Ok(report)) => {
                self.selected = self.selected.min(report.rows.len().saturating_sub(1));
                self.category = self.category.min(report.categories.len().saturating_sub(1));
                FailuresStatus::Ready(report)
            }
            FailuresUpdate::Done(Err(e)) => FailuresStatus::Failed(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, rank: Option<usize>) -> FailureRow {
        FailureRow {
            query: ImageInfo {
                path: PathBuf::from(format!("q{n}.jpg")),
                item_id: format!("id_{n}"),
                category: "Tees".into(),
                big: "TOPS".into(),
                bbox: None,
            },
            rank,
            true_hit: None,
            ahead: Vec::new(),
        }
    }

    fn report(ranks: &[Option<usize>]) -> FailuresReport {
        FailuresReport {
            rows: ranks.iter().enumerate().map(|(i, &r)| row(i, r)).collect(),
            categories: Vec::new(),
            gallery: 10,
            unreadable: 0,
            seconds: 0.1,
        }
    }

    #[test]
    fn asks_once_per_index_and_drops_stale_answers() {
        let mut s = FailuresState::default();
        assert_eq!(s.ask(true, true), None, "closed: nothing to ask");
        s.toggle();
        assert_eq!(s.ask(false, true), None, "no index yet");
        assert_eq!(s.ask(true, false), None, "no queries yet");
        let first = s.ask(true, true).expect("asked");
        assert_eq!(s.ask(true, true), None, "already computing");
        s.apply(first, FailuresUpdate::Progress { done: 3, total: 10 });
        assert_eq!(s.status, FailuresStatus::Computing { done: 3, total: 10 });
        // The index is rebuilt meanwhile: the old answer no longer counts.
        s.index_changed();
        s.apply(first, FailuresUpdate::Done(Ok(report(&[Some(3)]))));
        assert_eq!(s.status, FailuresStatus::NotAsked);
        let second = s.ask(true, true).expect("asked again");
        assert_ne!(first, second);
        s.apply(
            second,
            FailuresUpdate::Done(Ok(report(&[None, Some(9), Some(1)]))),
        );
        assert_eq!(s.selected_row().map(|r| r.rank), Some(None));
        assert!((s.report().expect("ready").top(1) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.ask(true, true), None, "ready: nothing to ask");
    }

    #[test]
    fn a_failed_computation_is_tried_again_when_the_view_reopens() {
        let mut s = FailuresState::default();
        s.toggle();
        let t = s.ask(true, true).expect("asked");
        s.apply(t, FailuresUpdate::Done(Err("boom".into())));
        assert_eq!(s.ask(true, true), None);
        s.toggle();
        s.toggle();
        assert!(s.ask(true, true).is_some());
    }

    #[test]
    fn moves_in_the_list_or_the_category_table_and_esc_closes_one_at_a_time() {
        let mut s = FailuresState::default();
        s.toggle();
        let t = s.ask(true, true).expect("asked");
        let mut r = report(&[Some(9), Some(5), Some(2), Some(1)]);
        r.categories = (0..3)
            .map(|i| CategoryScore {
                category: format!("C/{i}"),
                queries: 1,
                top1: 0.0,
                top20: 0.0,
            })
            .collect();
        s.apply(t, FailuresUpdate::Done(Ok(r)));
        s.step(10);
        assert_eq!(s.selected, 3);
        s.step(-1);
        assert_eq!(s.selected, 2);
        s.toggle_categories();
        s.step(1);
        assert_eq!((s.selected, s.category), (2, 1));
        s.step(10);
        assert_eq!(s.category, 2);
        s.back();
        assert!(s.open && !s.categories);
        s.back();
        assert!(!s.open);
    }
}
