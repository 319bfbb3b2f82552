//! How fast this machine reads memory: the floor of a scan over the gallery, which
//! reads every byte of it once per query. A read-only pass
//! ([`vitrine_kernels::scan::read_sum`]) over a buffer far larger than the last-level
//! cache, on one thread and on every thread of the rayon pool, in the same run as
//! the scan it is compared with (the machine is shared, so figures from another run
//! say little).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use vitrine_kernels::scan::read_sum;

/// The buffer read, at least: 1 GiB, above the last-level caches of the machines
/// this runs on (the shared L3 a VM reports can be the whole socket's).
pub const MIN_BYTES: usize = 1 << 30;

/// Galleries smaller than this are not compared with memory bandwidth: they stay in
/// the caches between queries, so main memory is not their floor.
pub const MIN_GALLERY_BYTES: usize = 64 << 20;

/// Passes per thread count; the fastest one counts (what the memory can do, when
/// the other users of the machine leave it alone for a pass).
const PASSES: usize = 3;

/// Values summed per task of the multi-threaded pass (4 MiB).
const TASK_VALUES: usize = 1 << 20;

/// Read bandwidth, GB/s (10⁹ bytes per second).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReadBandwidth {
    pub bytes: usize,
    pub one_thread_gb_per_s: f64,
    pub threads: usize,
    pub all_threads_gb_per_s: f64,
}

fn best_pass(f: impl Fn() -> f32) -> f64 {
    (0..PASSES)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures the read bandwidth over a buffer of `bytes` (at least [`MIN_BYTES`]).
pub fn measure(bytes: usize) -> ReadBandwidth {
    let len = bytes.max(MIN_BYTES) / 4;
    let mut data = vec![0f32; len];
    // Written once so that every page is mapped to memory of its own (untouched
    // zero pages would all read one cached page).
    data.par_chunks_mut(TASK_VALUES).for_each(|c| c.fill(1.0));
    let bytes = len * 4;
    let one = best_pass(|| read_sum(&data));
    let all = best_pass(|| data.par_chunks(TASK_VALUES).map(read_sum).sum());
    let gb = |s: f64| bytes as f64 / s.max(1e-9) / 1e9;
    ReadBandwidth {
        bytes,
        one_thread_gb_per_s: gb(one),
        threads: rayon::current_num_threads(),
        all_threads_gb_per_s: gb(all),
    }
}
