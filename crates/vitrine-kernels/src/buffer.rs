//! Fresh output vectors written in parallel.
//!
//! `vec![0.0; n]` followed by a parallel kernel zeroes the whole vector first on the
//! calling thread, while the pool waits: the large blocks [`crate::alloc`] hands back
//! are reused, not fresh zero pages, so that is a real serial memset. For ResNet50 at
//! 128 px those memsets and the copies beside them were about 12% of a training step
//! with the second core idle. [`par_vec`] instead zeroes each chunk inside the task
//! that writes it, where the lines are about to be written anyway; [`concat`] copies
//! pieces into one vector in parallel.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `len` floats built in chunks of `chunk` elements (the last may be
/// shorter): `fill(i, out)` gets chunk `i`, zeroed, and writes what it needs to; the
/// chunks are filled in parallel.
pub fn par_vec(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, out)| fill(i, zeroed(out)));
    // SAFETY: every one of the `len` elements was initialised by `zeroed` (the chunks
    // cover `..len`), and `len` is within the capacity reserved above.
    #[allow(unsafe_code)]
    unsafe {
        v.set_len(len);
    }
    v
}

/// A copy of `src` built in chunks of `chunk` elements, each then handed to
/// `fill(i, out)` to rewrite in place, in parallel: for kernels whose output is a
/// function of `src` element by element (no zeroing pass, the copy is the first
/// write of each line).
pub fn par_vec_from(
    src: &[f32],
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut v = Vec::with_capacity(src.len());
    v.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(chunk)
        .zip(src.par_chunks(chunk))
        .enumerate()
        .for_each(|(i, (out, from))| fill(i, copied(out, from)));
    // SAFETY: every one of the `src.len()` elements was initialised by `copied` (the
    // chunks cover `..src.len()`), within the capacity reserved above.
    #[allow(unsafe_code)]
    unsafe {
        v.set_len(src.len());
    }
    v
}

/// `pieces` one after another in a new vector, copied in parallel (one task per piece).
pub fn concat(pieces: &[&[f32]]) -> Vec<f32> {
    let len = pieces.iter().map(|p| p.len()).sum();
    let mut v = Vec::with_capacity(len);
    let mut rest = &mut v.spare_capacity_mut()[..len];
    let mut jobs = Vec::with_capacity(pieces.len());
    for &p in pieces {
        let (dst, tail) = rest.split_at_mut(p.len());
        jobs.push((dst, p));
        rest = tail;
    }
    jobs.into_par_iter().for_each(|(dst, src)| {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(s);
        }
    });
    // SAFETY: the pieces' destinations tile `..len` exactly (their lengths sum to
    // `len`), and each was written in full from a source of the same length.
    #[allow(unsafe_code)]
    unsafe {
        v.set_len(len);
    }
    v
}

/// `out` holding `from` (of the same length), as initialised floats.
fn copied<'a>(out: &'a mut [MaybeUninit<f32>], from: &[f32]) -> &'a mut [f32] {
    out.write_copy_of_slice(from)
}

/// `out` with every element set to 0, as initialised floats.
fn zeroed(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    out.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just initialised, and `MaybeUninit<f32>` has `f32`'s
    // layout.
    #[allow(unsafe_code)]
    unsafe {
        &mut *(std::ptr::from_mut::<[MaybeUninit<f32>]>(out) as *mut [f32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_vec_hands_out_zeroed_chunks_in_order() {
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (12, 3), (1000, 64), (5, 0)] {
            let v = par_vec(len, chunk, |i, out| {
                assert!(out.iter().all(|&x| x == 0.0), "chunk {i} not zeroed");
                for (j, o) in out.iter_mut().enumerate() {
                    // Odd positions are left as handed out.
                    if j % 2 == 0 {
                        *o = (i * chunk.max(1) + j) as f32;
                    }
                }
            });
            assert_eq!(v.len(), len);
            for (k, &x) in v.iter().enumerate() {
                let j = k % chunk.max(1);
                let want = if j % 2 == 0 { k as f32 } else { 0.0 };
                assert_eq!(x, want, "len {len} chunk {chunk} at {k}");
            }
        }
    }

    #[test]
    fn par_vec_from_hands_out_copies_of_the_source_chunks_in_order() {
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (12, 3), (1000, 64), (5, 0)] {
            let src: Vec<f32> = (0..len).map(|i| i as f32 * 0.5).collect();
            let v = par_vec_from(&src, chunk, |i, out| {
                let c = chunk.max(1);
                for (j, o) in out.iter_mut().enumerate() {
                    assert_eq!(*o, src[i * c + j], "chunk {i} is not the source's");
                    if j % 2 == 0 {
                        *o = -*o;
                    }
                }
            });
            let want: Vec<f32> = src
                .iter()
                .enumerate()
                .map(|(k, &x)| if k % chunk.max(1) % 2 == 0 { -x } else { x })
                .collect();
            assert_eq!(v, want, "len {len} chunk {chunk}");
        }
    }

    #[test]
    fn concat_keeps_the_pieces_in_order() {
        let a = [1.0, 2.0, 3.0];
        let b: [f32; 0] = [];
        let c = [4.0];
        let d: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let v = concat(&[&a, &b, &c, &d]);
        let mut want = vec![1.0, 2.0, 3.0, 4.0];
        want.extend_from_slice(&d);
        assert_eq!(v, want);
        assert!(concat(&[]).is_empty());
    }
}
