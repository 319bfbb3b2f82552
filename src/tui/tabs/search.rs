//! The Search tab's state: the test queries, a typed path, the result grid and the
//! selected result, the index they come from and whether the search worker has its
//! model and index in memory yet, and the failures view ([`super::failures`]).

use std::path::PathBuf;

use super::dataset::ImageInfo;
use super::failures::FailuresState;
use super::moved;

/// Results asked of the index.
pub const TOP_K: usize = 20;
/// Columns of the result grid.
pub const GRID_COLS: usize = 5;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct HitInfo {
    pub rank: usize,
    pub score: f32,
    pub path: PathBuf,
    pub item_id: String,
    pub category: String,
    /// Same item as the query.
    pub is_match: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub query: PathBuf,
    /// The query's item when it is a dataset image.
    pub query_item: Option<String>,
    pub hits: Vec<HitInfo>,
    pub millis: f64,
}

impl SearchResults {
    /// Rank of the first hit of the query's item.
    pub fn first_match(&self) -> Option<usize> {
        self.hits.iter().find(|h| h.is_match).map(|h| h.rank)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Queries,
    Results,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IndexStatus {
    Unknown,
    Missing,
    Building { done: usize, total: usize },
    Ready { count: usize },
    Failed(String),
}

/// The search worker's model and index in memory: loaded in the background as soon
/// as an index is ready (and again after a rebuild), so that the first search does
/// not wait for them; a search asked meanwhile waits for that load.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLoad {
    /// Nothing loaded or loading (no index yet).
    Idle,
    Loading,
    Ready {
        seconds: f64,
        /// The beam searches walk, and where it comes from
        /// ([`crate::index::Searcher::beam_label`]).
        beam: String,
    },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchState {
    pub queries: Vec<ImageInfo>,
    pub selected: usize,
    /// A path being typed after `/`.
    pub input: Option<String>,
    pub focus: Focus,
    pub results: Option<SearchResults>,
    /// Selected result (index into the hits).
    pub hit: usize,
    /// The selected result shown large.
    pub detail: bool,
    /// A search in flight.
    pub pending: Option<PathBuf>,
    pub error: Option<String>,
    pub model: ModelLoad,
    pub failures: FailuresState,
}

impl Default for SearchState {
    fn default() -> Self {
        Self {
            queries: Vec::new(),
            selected: 0,
            input: None,
            focus: Focus::Queries,
            results: None,
            hit: 0,
            detail: false,
            pending: None,
            error: None,
            model: ModelLoad::Idle,
            failures: FailuresState::default(),
        }
    }
}

impl SearchState {
    /// Esc: closes the input, else the failures view (its category table first), else
    /// the large result, else goes back to the queries.
    pub fn back(&mut self) {
        if self.failures.open && self.input.is_none() {
            self.failures.back();
        } else if self.input.is_some() {
            self.input = None;
        } else if self.detail {
            self.detail = false;
        } else {
            self.focus = Focus::Queries;
        }
    }

    /// Up/Down (and pages) in the query list, or a row of the result grid
    /// (`grid_by` cells); nothing while a result is shown large.
    pub fn step(&mut self, by: isize, grid_by: isize) {
        if self.failures.open {
            self.failures.step(by);
            return;
        }
        if self.detail {
            return;
        }
        match self.focus {
            Focus::Queries => self.selected = moved(self.selected, by, self.queries.len()),
            Focus::Results => {
                let n = self.results.as_ref().map_or(0, |r| r.hits.len());
                let next = self.hit as isize + grid_by;
                if (0..n as isize).contains(&next) {
                    self.hit = next as usize;
                } else if by.abs() > 1 {
                    self.hit = moved(self.hit, grid_by, n);
                }
            }
        }
    }

    /// Left/Right in the result grid.
    pub fn grid(&mut self, by: isize) {
        if self.focus == Focus::Results && !self.detail && !self.failures.open {
            let n = self.results.as_ref().map_or(0, |r| r.hits.len());
            self.hit = moved(self.hit, by, n);
        }
    }

    /// `/`: starts typing a path (not over the failures view).
    pub fn start_input(&mut self) {
        if self.failures.open {
            return;
        }
        self.input = Some(String::new());
        self.detail = false;
    }

    /// Enter: the search to run (the typed path, the selected query with its item,
    /// or in the failures view the selected failure's query, which closes the view),
    /// or on a result, shows it large (or small again).
    pub fn enter(&mut self) -> Option<(PathBuf, Option<String>)> {
        if self.failures.open && self.input.is_none() {
            let q = self.failures.selected_row()?.query.clone();
            self.failures.open = false;
            if let Some(i) = self.queries.iter().position(|x| x.path == q.path) {
                self.selected = i;
            }
            self.focus = Focus::Queries;
            self.detail = false;
            self.pending = Some(q.path.clone());
            self.error = None;
            return Some((q.path, Some(q.item_id)));
        }
        if let Some(text) = self.input.take() {
            let text = text.trim().to_string();
            if text.is_empty() {
                return None;
            }
            let path = expand_home(&text);
            let item = self
                .queries
                .iter()
                .find(|q| q.path == path)
                .map(|q| q.item_id.clone());
            self.pending = Some(path.clone());
            self.error = None;
            return Some((path, item));
        }
        match self.focus {
            Focus::Queries => {
                let q = self.queries.get(self.selected)?;
                let (path, item) = (q.path.clone(), q.item_id.clone());
                self.pending = Some(path.clone());
                self.error = None;
                Some((path, Some(item)))
            }
            Focus::Results => {
                if self.results.as_ref().is_some_and(|r| !r.hits.is_empty()) {
                    self.detail = !self.detail;
                }
                None
            }
        }
    }

    /// The search worker started or finished loading its model and index.
    pub fn model_event(&mut self, load: ModelLoad) {
        self.model = load;
    }

    /// A search was asked while the model and index are still loading: it waits for
    /// them (the worker takes requests in order), it does not load them again.
    pub fn waiting_for_model(&self) -> bool {
        self.pending.is_some() && self.model == ModelLoad::Loading
    }

    /// The failures computation to start (see [`FailuresState::ask`]).
    pub fn ask_failures(&mut self, index_ready: bool) -> Option<u64> {
        let have_queries = !self.queries.is_empty();
        self.failures.ask(index_ready, have_queries)
    }

    /// The search worker's answer.
    pub fn answered(&mut self, result: Result<SearchResults, String>) {
        self.pending = None;
        match result {
            Ok(results) => {
                self.error = None;
                self.hit = 0;
                self.detail = false;
                self.focus = if results.hits.is_empty() {
                    Focus::Queries
                } else {
                    Focus::Results
                };
                self.results = Some(results);
            }
            Err(e) => self.error = Some(e),
        }
    }
}

fn expand_home(text: &str) -> PathBuf {
    if let Some(rest) = text.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    PathBuf::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(n: usize) -> ImageInfo {
        ImageInfo {
            path: PathBuf::from(format!("img/id_{n}/comsumer_01.jpg")),
            item_id: format!("id_{n}"),
            category: "Tees".into(),
            big: "TOPS".into(),
            bbox: None,
        }
    }

    #[test]
    fn a_search_asked_while_the_model_loads_waits_for_it_and_is_answered_after() {
        let mut s = SearchState {
            queries: vec![query(1), query(2)],
            ..SearchState::default()
        };
        assert_eq!(s.model, ModelLoad::Idle);
        s.model_event(ModelLoad::Loading);
        assert!(!s.waiting_for_model(), "nothing asked yet");
        let asked = s.enter().expect("a search");
        assert_eq!(asked, (query(1).path, Some("id_1".into())));
        assert!(s.waiting_for_model());
        // Loaded: the same search is now running, not asked again.
        s.model_event(ModelLoad::Ready {
            seconds: 0.8,
            beam: "ef 21".into(),
        });
        assert!(!s.waiting_for_model());
        assert_eq!(s.pending, Some(query(1).path));
        s.answered(Ok(SearchResults {
            query: query(1).path,
            query_item: Some("id_1".into()),
            hits: Vec::new(),
            millis: 900.0,
        }));
        assert_eq!(s.pending, None);
        // A rebuilt index is loaded again; a load that fails says why.
        s.model_event(ModelLoad::Loading);
        s.model_event(ModelLoad::Failed("index damaged".into()));
        assert_eq!(s.model, ModelLoad::Failed("index damaged".into()));
        assert!(!s.waiting_for_model());
    }

    #[test]
    fn enter_in_the_failures_view_searches_its_query_and_selects_it() {
        use crate::tui::tabs::failures::{FailureRow, FailuresReport, FailuresUpdate};
        let mut s = SearchState {
            queries: (0..5).map(query).collect(),
            ..SearchState::default()
        };
        s.failures.toggle();
        let token = s.ask_failures(true).expect("asked");
        let rows = [0, 3]
            .iter()
            .map(|&n| FailureRow {
                query: query(n),
                rank: Some(9 - 2 * n),
                true_hit: None,
                ahead: Vec::new(),
            })
            .collect();
        let report = FailuresReport {
            rows,
            categories: Vec::new(),
            gallery: 9,
            unreadable: 0,
            seconds: 0.0,
        };
        s.failures.apply(token, FailuresUpdate::Done(Ok(report)));
        s.step(1, GRID_COLS as isize);
        s.grid(1);
        s.start_input();
        assert!(s.input.is_none(), "no path input over the failures view");
        assert_eq!(s.enter(), Some((query(3).path, Some("id_3".into()))));
        assert!(!s.failures.open);
        assert_eq!((s.selected, s.focus), (3, Focus::Queries));
        assert_eq!(s.pending, Some(query(3).path));
    }
}
