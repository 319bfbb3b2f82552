//! Training throughput over a window of recent steps.

use std::time::Instant;

/// Triplets per second over the recent steps (the first step, a warm-up, excluded).
#[derive(Debug, Default)]
pub struct RateMeter {
    window: std::collections::VecDeque<(Instant, usize)>,
}

impl RateMeter {
    const WINDOW: usize = 20;

    pub fn record(&mut self, triplets: usize) {
        self.window.push_back((Instant::now(), triplets));
        if self.window.len() > Self::WINDOW {
            self.window.pop_front();
        }
    }

    /// A pause must not count as slow training.
    pub fn pause(&mut self) {
        self.window.clear();
    }

    pub fn per_second(&self) -> f32 {
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else {
            return 0.0;
        };
        let secs = last.0.duration_since(first.0).as_secs_f32();
        if secs <= 0.0 {
            return 0.0;
        }
        let n: usize = self.window.iter().skip(1).map(|(_, t)| t).sum();
        n as f32 / secs
    }
}
