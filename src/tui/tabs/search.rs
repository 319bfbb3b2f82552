//! The Search tab's state: the test queries, a typed path, the result grid and the
//! selected result, and the index they come from.

use std::path::PathBuf;

use super::dataset::ImageInfo;
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
        }
    }
}

impl SearchState {
    /// Esc: closes the input, else the large result, else goes back to the queries.
    pub fn back(&mut self) {
        if self.input.is_some() {
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
        if self.focus == Focus::Results && !self.detail {
            let n = self.results.as_ref().map_or(0, |r| r.hits.len());
            self.hit = moved(self.hit, by, n);
        }
    }

    /// `/`: starts typing a path.
    pub fn start_input(&mut self) {
        self.input = Some(String::new());
        self.detail = false;
    }

    /// Enter: the search to run (the typed path, or the selected query with its
    /// item), or on a result, shows it large (or small again).
    pub fn enter(&mut self) -> Option<(PathBuf, Option<String>)> {
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
