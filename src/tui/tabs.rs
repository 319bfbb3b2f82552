//! Each tab's state and the update helpers that change it, beside its view in
//! [`super::views`]: [`train`] (the run folded from its events, the trainer process),
//! [`dataset`], [`triplets`], [`search`] (with the index), [`runs`] (the runs folder). [`super::app::App`] composes
//! them and is still the only caller: every change goes through `App::update`.

pub mod dataset;
pub mod failures;
pub mod runs;
pub mod search;
pub mod train;
pub mod triplets;

/// `i + by` clamped to `0..n`.
fn moved(i: usize, by: isize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (i as isize).saturating_add(by).clamp(0, n as isize - 1) as usize
}
