//! NumPy `.npy` files of a 2-D `float32` matrix, row-major: what `numpy.load` reads.
//!
//! Format 1.0: the magic `\x93NUMPY`, version `1 0`, a little-endian `u16` header
//! length, then an ASCII Python dict (`{'descr': '<f4', 'fortran_order': False,
//! 'shape': (N, D), }`) padded with spaces and ended by `\n` so that the data starts
//! at a multiple of 64 bytes, then `N·D` little-endian `f32`. Reading also accepts
//! format 2.0/3.0 (a `u32` header length).
//!
//! Written by hand on purpose, not taken from an `.npy` crate: the embeddings file
//! of an index may come from anywhere, and this reader is hardened against a
//! hostile one (every length and shape checked against the file's size before any
//! allocation, no panics on truncation or overflow; `tests/proptest_parsers.rs` and
//! `tests/hostile_inputs.rs` hold it to that). The format is one small header and
//! raw `f32`s, so a crate would save little and its checks would be unknown.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Data offset alignment used by NumPy since 1.x.
const ALIGN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a .npy file of a 2-D float32 matrix: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
}

/// A row-major `rows × cols` matrix of `f32`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    /// `data.len()` must be `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Option<Self> {
        (rows.checked_mul(cols) == Some(data.len())).then_some(Self { rows, cols, data })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn iter_rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.cols.max(1)).take(self.rows)
    }
}

/// The header bytes (magic through the newline) for a `rows × cols` `<f4` matrix.
pub fn header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic(6) + version(2) + length(2) + dict + padding + '\n'
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(ALIGN) * ALIGN;
    let header_len = total - 10;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Writes the matrix to `out` in `.npy` format 1.0.
pub fn write_to(out: &mut dyn Write, m: &Matrix) -> io::Result<()> {
    out.write_all(&header(m.rows, m.cols))?;
    let mut buf = Vec::with_capacity(4 * m.cols.max(1) * 256);
    for chunk in m.data.chunks(m.cols.max(1) * 256) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// The whole file as bytes.
pub fn to_bytes(m: &Matrix) -> Vec<u8> {
    let mut out = Vec::with_capacity(ALIGN + 4 * m.data.len());
    // Writing to a Vec cannot fail.
    let _ = write_to(&mut out, m);
    out
}

/// Writes `m` to `path` atomically (temporary sibling + rename).
pub fn save(path: &Path, m: &Matrix) -> io::Result<()> {
    crate::fsutil::write_atomic(path, |w| write_to(w, m))
}

/// Largest header accepted: NumPy writes well under 1 KiB; a format 2.0 length field
/// could otherwise ask for 4 GiB before any check.
const MAX_HEADER: usize = 1 << 20;

/// What a header declares: the shape, and where the data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    rows: usize,
    cols: usize,
    data_start: usize,
    /// `4 · rows · cols`, computed without overflow.
    data_len: usize,
}

/// Reads a 2-D `float32` matrix; `path` names the file in errors. The declared shape
/// is checked against the file's length before the data is read, so a hostile
/// header cannot make it allocate more than the file holds.
pub fn load(path: &Path) -> Result<Matrix, NpyError> {
    use std::io::Read;
    let io = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |reason| NpyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = crate::data::loader::open_regular(path).map_err(io)?;
    let len = usize::try_from(file.metadata().map_err(io)?.len()).unwrap_or(usize::MAX);
    let mut prefix = [0u8; 12];
    let got = read_up_to(&mut file, &mut prefix).map_err(io)?;
    let (_, end) = header_end(&prefix[..got]).map_err(format)?;
    if end > len {
        return Err(format(format!(
            "the header claims {end} bytes, the file has {len}"
        )));
    }
    let mut bytes = prefix[..got].to_vec();
    bytes.resize(end.max(got), 0);
    if end > got {
        file.read_exact(&mut bytes[got..]).map_err(io)?;
    }
    let h = parse_header(&bytes[..end]).map_err(format)?;
    if len - h.data_start != h.data_len {
        return Err(format(format!(
            "shape ({}, {}) needs {} data bytes, the file has {}",
            h.rows,
            h.cols,
            h.data_len,
            len - h.data_start
        )));
    }
    // A tiny header leaves data bytes in the prefix already read.
    let rest = h.data_len.saturating_sub(bytes.len() - h.data_start);
    bytes.reserve_exact(rest);
    // One byte more than declared: a file that grew meanwhile is caught, not cut.
    (&mut file)
        .take(rest as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    decode(&bytes, h).map_err(format)
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn read_up_to(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses `.npy` bytes of a 2-D little-endian `float32` C-order matrix.
pub fn parse(bytes: &[u8]) -> Result<Matrix, String> {
    let (_, end) = header_end(bytes)?;
    let header = bytes.get(..end).ok_or("truncated or non-text header")?;
    decode(bytes, parse_header(header)?)
}

/// Where the header dict starts and the data starts, from the magic, version and
/// length field.
fn header_end(bytes: &[u8]) -> Result<(usize, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported format version {v}")),
    };
    if header_len > MAX_HEADER {
        return Err(format!(
            "header of {header_len} bytes (at most {MAX_HEADER} accepted)"
        ));
    }
    Ok((start, start + header_len))
}

/// The shape in a whole header (magic through the dict), checked for size.
fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let (start, data_start) = header_end(bytes)?;
    let dict = bytes
        .get(start..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text header")?;
    let descr = dict_value(dict, "descr").ok_or("header has no 'descr'")?;
    if !matches!(descr.trim_matches(['\'', '"']), "<f4" | "=f4" | "f4") {
        return Err(format!(
            "dtype {descr} is not little-endian float32 ('<f4')"
        ));
    }
    let fortran = dict_value(dict, "fortran_order").ok_or("header has no 'fortran_order'")?;
    if fortran != "False" {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape = dict_value(dict, "shape").ok_or("header has no 'shape'")?;
    let dims: Vec<usize> = shape
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape}")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(format!("shape {shape} is not 2-D"));
    };
    if cols == 0 {
        return Err(format!("shape {shape} has no columns (0-d vectors)"));
    }
    let data_len = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| format!("shape {shape} is too large"))?;
    Ok(Header {
        rows,
        cols,
        data_start,
        data_len,
    })
}

/// The matrix from the bytes after a parsed header; their length must match it.
fn decode(bytes: &[u8], h: Header) -> Result<Matrix, String> {
    let data = &bytes[h.data_start.min(bytes.len())..];
    if data.len() != h.data_len {
        return Err(format!(
            "shape ({}, {}) needs {} data bytes, the file has {}",
            h.rows,
            h.cols,
            h.data_len,
            data.len()
        ));
    }
    let data = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Matrix {
        rows: h.rows,
        cols: h.cols,
        data,
    })
}

/// The raw text of `key`'s value in a Python dict literal (tuples kept whole).
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let pos = dict
        .find(&format!("'{key}'"))
        .or_else(|| dict.find(&format!("\"{key}\"")))?;
    let rest = dict[pos + key.len() + 2..].trim_start().strip_prefix(':')?;
    let rest = rest.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_parses_back() {
        let m = Matrix::new(3, 2, vec![1.0, -2.0, 0.5, 3.25, 0.0, 7.0]).expect("m");
        let bytes = to_bytes(&m);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(bytes[10 + hl - 1], b'\n');
        assert_eq!(bytes.len(), 10 + hl + 24);
        assert_eq!(parse(&bytes).expect("parse"), m);
        assert!(parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(parse(b"not numpy at all").is_err());
    }

    #[test]
    fn reads_numpy_style_headers() {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }          \n";
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        bytes.extend_from_slice(&(-1f32).to_le_bytes());
        let m = parse(&bytes).expect("parse");
        assert_eq!((m.rows, m.cols, m.data), (1, 2, vec![1.5, -1.0]));
        let bad = dict.replace("<f4", "<f8");
        let mut b2 = b"\x93NUMPY\x01\x00".to_vec();
        b2.extend_from_slice(&(bad.len() as u16).to_le_bytes());
        b2.extend_from_slice(bad.as_bytes());
        assert!(parse(&b2).expect_err("f8").contains("float32"));
    }

    /// A header claiming `rows × cols`, then `data` zero bytes.
    fn crafted(rows: usize, cols: usize, data: usize) -> Vec<u8> {
        let mut bytes = header(rows, cols);
        bytes.resize(bytes.len() + data, 0);
        bytes
    }

    #[test]
    fn shapes_whose_size_overflows_or_exceeds_the_file_are_refused() {
        // 4 · 2^62 wraps to 0 and used to match the empty data.
        let e = parse(&crafted(1 << 62, 1, 0)).expect_err("(2^62, 1)");
        assert!(e.contains("too large"), "{e}");
        let e = parse(&crafted(1 << 31, 1 << 31, 0)).expect_err("(2^31, 2^31)");
        assert!(e.contains("too large"), "{e}");
        let e = parse(&crafted(1 << 40, 2, 8)).expect_err("(2^40, 2)");
        assert!(e.contains("needs"), "{e}");
        let e = parse(&crafted(usize::MAX, usize::MAX, 0)).expect_err("(max, max)");
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn zero_columns_are_refused_zero_rows_are_not() {
        let e = parse(&crafted(5, 0, 0)).expect_err("(5, 0)");
        assert!(e.contains("no columns"), "{e}");
        assert!(parse(&crafted(0, 0, 0)).is_err());
        let m = parse(&crafted(0, 4, 0)).expect("(0, 4)");
        assert_eq!((m.rows, m.cols, m.data.len()), (0, 4, 0));
    }

    #[test]
    fn load_checks_the_file_length_and_names_the_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("crafted.npy");
        for (bytes, why) in [
            (crafted(1 << 62, 1, 0), "too large"),
            (crafted(1 << 40, 4, 16), "needs"),
            (crafted(3, 0, 0), "no columns"),
            (crafted(2, 2, 15), "needs"),
            (crafted(2, 2, 17), "needs"),
        ] {
            std::fs::write(&path, &bytes).expect("write");
            let e = load(&path).expect_err(why).to_string();
            assert!(e.contains("crafted.npy") && e.contains(why), "{e}");
        }
        // A format 2.0 length field pointing far past the end of the file.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &v2).expect("write");
        assert!(load(&path).is_err());
        v2.truncate(8);
        v2.extend_from_slice(&1000u32.to_le_bytes());
        std::fs::write(&path, &v2).expect("write");
        let e = load(&path).expect_err("header past the end").to_string();
        assert!(e.contains("1012 bytes"), "{e}");
        // The good path reads what parse reads.
        let m = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, -4.0, 5.5, 0.0]).expect("m");
        save(&path, &m).expect("save");
        assert_eq!(load(&path).expect("load"), m);
        let m = Matrix::new(0, 3, Vec::new()).expect("m");
        save(&path, &m).expect("save");
        assert_eq!(load(&path).expect("load"), m);
    }
}
