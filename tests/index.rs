//! The index without a model: exact search, HNSW + re-rank recall, the index folder
//! (save, reload, damage), NPY files.

use std::path::Path;

use vitrine::config::IndexConfig;
use vitrine::eval::Hit;
use vitrine::index::clustered::{ClusterSpec, vectors};
use vitrine::index::hnsw::GraphParams;
use vitrine::index::npy::{self, Matrix};
use vitrine::index::rerank::{SearchParams, VectorIndex, recall_at_k};
use vitrine::index::search::params_for;
use vitrine::index::store::{
    self, Entry, GraphRecord, IndexError, IndexHeader, SourceRecord, build_graph,
};
use vitrine::index::tune;

const PARAMS: GraphParams = GraphParams {
    m: 16,
    ef_construction: 200,
};

fn spec(dim: usize, clusters: usize) -> ClusterSpec {
    ClusterSpec {
        dim,
        clusters,
        group_size: 20,
        ..ClusterSpec::default()
    }
}

fn build(base: &Matrix) -> VectorIndex {
    let (_hnsw, graph, recall) = build_graph(base, PARAMS, 64).expect("build");
    assert!(recall >= 0.99, "self-recall {recall}");
    VectorIndex::new(base.clone(), graph)
}

fn ids(hits: &[Hit]) -> Vec<usize> {
    hits.iter().map(|h| h.index).collect()
}

#[test]
fn exact_search_equals_a_naive_reference() {
    let base = vectors(&spec(24, 40), 400, 0);
    let queries = vectors(&spec(24, 40), 30, 1);
    let index = VectorIndex::new(base.clone(), vitrine::index::hnsw::Graph::default());
    for q in queries.iter_rows() {
        // Naive: cosine in f64 with explicit norms, sorted by score then index.
        let qn = q.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let mut naive: Vec<(usize, f64)> = base
            .iter_rows()
            .enumerate()
            .map(|(i, r)| {
                let d: f64 = q
                    .iter()
                    .zip(r)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let rn = r.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                (i, d / (qn * rn))
            })
            .collect();
        naive.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let got = index.exact(q, 20);
        assert_eq!(got.len(), 20);
        for (r, h) in got.iter().enumerate() {
            let (i, score) = naive[r];
            assert!((f64::from(h.score) - score).abs() < 1e-5, "rank {r}");
            // The same row, unless the naive scores around it are a float tie.
            let tie = naive[r + 1].1 > score - 1e-5 || (r > 0 && naive[r - 1].1 < score + 1e-5);
            assert!(h.index == i || tie, "rank {r}: {} vs {i}", h.index);
        }
    }
    // The graph-less index falls back to the exact scan; wrong widths give nothing.
    let q = queries.row(0);
    assert_eq!(
        index.search(q, 5, SearchParams::default()),
        index.exact(q, 5)
    );
    assert!(index.exact(&q[..10], 5).is_empty());
}

#[test]
fn hnsw_with_rerank_reaches_recall_at_20_on_clustered_vectors() {
    let s = spec(64, 300);
    let base = vectors(&s, 4000, 0);
    let queries = vectors(&s, 200, 1);
    let index = build(&base);
    let approx: Vec<Vec<usize>> = queries
        .iter_rows()
        .map(|q| ids(&index.search(q, 20, SearchParams::default())))
        .collect();
    let exact: Vec<Vec<usize>> = queries
        .iter_rows()
        .map(|q| ids(&index.exact(q, 20)))
        .collect();
    let recall = recall_at_k(&approx, &exact, 20);
    assert!(recall >= 0.99, "recall@20 {recall}");
    // Re-ranked hits are sorted by exact cosine.
    let hits = index.search(queries.row(0), 20, SearchParams::default());
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
}

fn header(dim: usize) -> IndexHeader {
    IndexHeader {
        format: store::FORMAT,
        dim,
        count: 0,
        distance: String::new(),
        fingerprint: "0123456789abcdef".into(),
        checkpoint: String::new(),
        backbone: "resnet18".into(),
        image_size: 32,
        sources: vec![SourceRecord::Folder { root: "/x".into() }],
        graph: GraphRecord {
            basename: String::new(),
            m: PARAMS.m,
            ef_construction: PARAMS.ef_construction,
            self_recall: 1.0,
            search_ef: None,
        },
        files: std::collections::BTreeMap::default(),
        created: 0.0,
    }
}

fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|id| Entry {
            id,
            path: format!("/img/{id}.jpg"),
            item_id: format!("id_{:08}", id / 4),
            category: "TOPS/T_Shirt".into(),
        })
        .collect()
}

fn write_index(dir: &Path, base: &Matrix) {
    let (hnsw, _, _) = build_graph(base, PARAMS, 64).expect("build");
    store::write(dir, header(base.cols), &entries(base.rows), base, &hnsw).expect("write");
}

#[test]
fn index_folder_saves_and_reloads_to_the_same_results() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("run").join("index");
    let s = spec(32, 100);
    let base = vectors(&s, 1500, 0);
    let queries = vectors(&s, 50, 1);
    let (hnsw, graph, _) = build_graph(&base, PARAMS, 64).expect("build");
    let written = store::write(&dir, header(32), &entries(1500), &base, &hnsw).expect("write");
    assert_eq!(written.count, 1500);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    for f in ["header.json", "embeddings.npy", "entries.json"] {
        assert!(names.contains(&f.to_string()), "{f} in {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with(".hnsw.graph")));
    assert!(names.iter().any(|n| n.ends_with(".hnsw.data")));
    let fresh = VectorIndex::new(base.clone(), graph);
    let loaded = store::load(&dir).expect("load");
    assert_eq!(loaded.entries, entries(1500));
    assert_eq!(loaded.vectors.vectors(), &base);
    for q in queries.iter_rows() {
        assert_eq!(
            loaded.vectors.search(q, 20, SearchParams::default()),
            fresh.search(q, 20, SearchParams::default())
        );
    }
    // Writing again replaces the index atomically and leaves no temporary folders.
    write_index(&dir, &base);
    let siblings: Vec<_> = std::fs::read_dir(dir.parent().expect("run"))
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("index")]);
}

#[test]
fn the_measured_beam_is_stored_and_an_index_without_it_still_loads() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("index");
    let base = vectors(&spec(32, 60), 1200, 0);
    // An index from before the measurement: no `search_ef` in its header.
    write_index(&dir, &base);
    let text = std::fs::read_to_string(dir.join("header.json")).expect("header");
    assert!(!text.contains("search_ef"), "{text}");
    let old = store::load(&dir).expect("an old index loads");
    assert_eq!(old.header.graph.search_ef, None);
    let settings = IndexConfig::default();
    // It searches as before: the shortlist (5 × k) is the beam.
    let (params, tuned) = params_for(&settings, &old.header);
    assert_eq!((params.resolve(20), tuned), ((100, 100), None));
    // A measured beam is written into the header and read back; searches use it
    // unless index.ef_search is set.
    let (hnsw, graph, _) = build_graph(&base, PARAMS, 64).expect("build");
    let choice = tune::choose_ef(
        &VectorIndex::new(base.clone(), graph),
        tune::RECALL_K,
        settings.target_recall,
        tune::SAMPLE,
        &mut |_, _| {},
    )
    .expect("measure");
    assert!(choice.reached && choice.recall >= settings.target_recall);
    assert_eq!(choice.sample, 1000);
    // A row held out is never among its own results.
    let index = VectorIndex::new(base.clone(), build_graph(&base, PARAMS, 64).expect("b").1);
    for row in (0..base.rows).step_by(97) {
        let hits = index.search_row_held_out(row, 20, tune::params_at(choice.ef));
        assert_eq!(hits.len(), 20);
        assert!(hits.iter().all(|h| h.index != row), "row {row}");
    }
    let mut h = header(base.cols);
    h.graph.search_ef = Some(choice);
    store::write(&dir, h, &entries(base.rows), &base, &hnsw).expect("write");
    let loaded = store::load(&dir).expect("load");
    assert_eq!(loaded.header.graph.search_ef, Some(choice));
    let (params, tuned) = params_for(&settings, &loaded.header);
    assert_eq!(
        (params.resolve(20), tuned),
        ((choice.ef, choice.ef), Some(choice))
    );
    let fixed = IndexConfig {
        ef_search: 150,
        ..IndexConfig::default()
    };
    let (params, tuned) = params_for(&fixed, &loaded.header);
    assert_eq!((params.resolve(20), tuned), ((100, 150), None));
}

#[test]
fn a_crash_between_the_renames_leaves_the_old_index_readable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("index");
    let base = vectors(&spec(16, 20), 200, 0);
    write_index(&dir, &base);
    // As if killed after `index` → `index.old` and before the new folder moved in.
    std::fs::rename(&dir, tmp.path().join("index.old")).expect("rename");
    let loaded = store::load(&dir).expect("falls back to index.old");
    assert_eq!(loaded.header.count, 200);
    // The next write restores and replaces it.
    write_index(&dir, &base);
    assert!(dir.join("header.json").is_file());
    assert!(!tmp.path().join("index.old").exists());
}

#[test]
fn missing_damaged_and_foreign_indexes_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("run").join("index");
    let err = store::load(&dir).expect_err("missing");
    assert!(matches!(err, IndexError::Missing { .. }));
    assert!(err.to_string().contains("vitrine index --run"), "{err}");

    let base = vectors(&spec(16, 20), 300, 0);
    write_index(&dir, &base);
    let header_text = std::fs::read_to_string(dir.join("header.json")).expect("header");
    let basename = serde_json::from_str::<IndexHeader>(&header_text)
        .expect("parse")
        .graph
        .basename;
    // Every file, damaged by one flipped byte or truncated, is caught before use.
    for name in [
        "embeddings.npy".to_string(),
        "entries.json".to_string(),
        format!("{basename}.hnsw.graph"),
        format!("{basename}.hnsw.data"),
    ] {
        let path = dir.join(&name);
        let good = std::fs::read(&path).expect("read");
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x5a;
        std::fs::write(&path, &bad).expect("write");
        let err = store::load(&dir).expect_err("damaged");
        assert!(matches!(err, IndexError::Corrupt { .. }), "{name}: {err}");
        assert!(err.to_string().contains(&name), "{err}");
        std::fs::write(&path, &good[..good.len() - 3]).expect("truncate");
        assert!(store::load(&dir).is_err());
        std::fs::remove_file(&path).expect("rm");
        let err = store::load(&dir).expect_err("missing file");
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::write(&path, &good).expect("restore");
        store::load(&dir).expect("restored");
    }
    std::fs::write(dir.join("header.json"), "{ not json").expect("write");
    assert!(matches!(store::load(&dir), Err(IndexError::Corrupt { .. })));
    std::fs::write(
        dir.join("header.json"),
        header_text.replace("\"format\": 1", "\"format\": 99"),
    )
    .expect("write");
    let err = store::load(&dir).expect_err("format");
    assert!(matches!(err, IndexError::Format { found: 99, .. }), "{err}");
}

#[test]
fn npy_files_have_numpy_headers_and_little_endian_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("m.npy");
    let m = Matrix::new(3, 4, (0..12).map(|i| i as f32 * 0.5 - 1.0).collect()).expect("m");
    npy::save(&path, &m).expect("save");
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    assert_eq!((10 + header_len) % 64, 0, "data aligned to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ascii");
    assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"));
    assert!(header.ends_with('\n'));
    assert_eq!(bytes.len(), 10 + header_len + 12 * 4);
    let data = &bytes[10 + header_len..];
    assert_eq!(&data[..4], &(-1.0f32).to_le_bytes());
    assert_eq!(&data[44..], &4.5f32.to_le_bytes());
    assert_eq!(npy::load(&path).expect("load"), m);
    // A file that is not .npy is an error naming it.
    std::fs::write(&path, b"hello").expect("write");
    let err = npy::load(&path).expect_err("bad");
    assert!(err.to_string().contains("m.npy"), "{err}");
}

#[test]
fn bench_search_finds_the_first_beam_reaching_each_target() {
    use vitrine::index::benchmark::{self, SearchBench, default_efs, fine_efs};
    let grid = fine_efs(20);
    // The coarse grid's beams stay (figures comparable with earlier runs), with every
    // 8 from 24 to 128 between them.
    assert!(
        default_efs(20).iter().all(|ef| grid.contains(ef)),
        "{grid:?}"
    );
    assert!(
        (24..=128).step_by(8).all(|ef| grid.contains(&ef)),
        "{grid:?}"
    );
    assert!(grid.windows(2).all(|w| w[0] < w[1]));
    // Loose clusters and a weak graph: recall@10 climbs over tens of beams.
    let s = ClusterSpec {
        spread: 1.0,
        ..spec(32, 60)
    };
    let (base, queries) = (vectors(&s, 3000, 0), vectors(&s, 200, 1));
    let targets = vec![0.95, 0.98, 0.99];
    let opts = SearchBench {
        k: 10,
        params: GraphParams {
            m: 8,
            ef_construction: 24,
        },
        efs: Vec::new(),
        exact_queries: 10,
        hnsw_rs: false,
        targets: targets.clone(),
        index_target: 0.99,
        builder: vitrine::config::IndexBuilder::Vitrine,
    };
    let report = benchmark::run(&base, &queries, &opts, &mut |_| {}).expect("bench");
    let sweep = fine_efs(10);
    let recall_at = |ef: usize| {
        report
            .runs
            .iter()
            .find(|r| r.engine == "vitrine" && r.ef == ef)
            .map(|r| r.recall_at_k)
    };
    assert_eq!(report.first_ef.len(), targets.len());
    let mut bisected = 0;
    for f in &report.first_ef {
        let ef =
            f.ef.unwrap_or_else(|| panic!("{f:?} not reached: {:?}", report.runs));
        assert!(recall_at(ef).is_some_and(|r| r >= f.target), "{f:?}");
        // Measured, not guessed: the beam one narrower was run and fell short.
        if ef > 10 {
            let below = recall_at(ef - 1).unwrap_or_else(|| panic!("ef {} not run", ef - 1));
            assert!(below < f.target, "{f:?}: ef {} reaches {below}", ef - 1);
            bisected += usize::from(!sweep.contains(&ef) || !sweep.contains(&(ef - 1)));
        }
    }
    assert!(bisected > 0, "no target fell between the grid's beams");
    // The beam `vitrine index` would choose is among the runs, and the fields of
    // earlier reports are all there.
    assert!(recall_at(report.index_ef.ef).is_some());
    let json = serde_json::to_value(&report).expect("json");
    for key in [
        "n",
        "dim",
        "queries",
        "k",
        "m",
        "ef_construction",
        "threads",
        "build_s",
        "self_recall",
        "exact_qps",
        "exact_qps_all_threads",
        "exact_gb_per_s",
        "read_bandwidth",
        "exact_batch_qps",
        "runs",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    for key in [
        "engine",
        "ef",
        "shortlist",
        "recall_at_k",
        "qps",
        "p50_ms",
        "p99_ms",
    ] {
        assert!(json["runs"][0].get(key).is_some(), "{key}");
    }
}

/// Recall@20 of the graph alone (no re-rank) at beam `ef`, over `queries`.
fn graph_recall(
    graph: &vitrine::index::hnsw::Graph,
    base: &Matrix,
    queries: &Matrix,
    exact: &[Vec<usize>],
    ef: usize,
) -> f64 {
    use vitrine::index::hnsw::{Visited, dot};
    let mut visited = Visited::default();
    let approx: Vec<Vec<usize>> = queries
        .iter_rows()
        .map(|q| {
            graph
                .search(|j| dot(q, base.row(j as usize)), ef, &mut visited)
                .iter()
                .take(20)
                .map(|&(id, _)| id as usize)
                .collect()
        })
        .collect();
    recall_at_k(&approx, exact, 20)
}

#[test]
fn vitrine_builder_matches_hnsw_rs_recall_at_equal_ef() {
    use vitrine::index::hnsw_insert;
    // Many small, close clusters: a graph without the diversity heuristic (or with
    // links dropped) strands whole clusters and loses recall at a small beam.
    let s = ClusterSpec {
        dim: 48,
        clusters: 800,
        group_size: 40,
        spread: 0.6,
        ..ClusterSpec::default()
    };
    let base = vectors(&s, 8000, 0);
    let queries = vectors(&s, 1000, 1);
    let params = GraphParams {
        m: 12,
        ef_construction: 100,
    };
    let exact_index = VectorIndex::new(base.clone(), vitrine::index::hnsw::Graph::default());
    let exact: Vec<Vec<usize>> = queries
        .iter_rows()
        .map(|q| ids(&exact_index.exact(q, 20)))
        .collect();
    // Parallel builds differ run to run: each builder's recall is the mean of two.
    let theirs: Vec<_> = (0..2)
        .map(|_| build_graph(&base, params, 64).expect("hnsw_rs build").1)
        .collect();
    let ours: Vec<_> = (0..2)
        .map(|_| hnsw_insert::build(&base.data, base.cols, params, true).expect("vitrine build"))
        .collect();
    assert!(ours.iter().all(|g| g.len() == base.rows));
    let mean = |graphs: &[vitrine::index::hnsw::Graph], ef: usize| {
        graphs
            .iter()
            .map(|g| graph_recall(g, &base, &queries, &exact, ef))
            .sum::<f64>()
            / graphs.len() as f64
    };
    let recalls: Vec<(usize, f64, f64)> = [20, 24, 30]
        .into_iter()
        .map(|ef| {
            let (r_theirs, r_ours) = (mean(&theirs, ef), mean(&ours, ef));
            eprintln!("ef {ef}: recall@20 hnsw_rs {r_theirs:.4}, vitrine {r_ours:.4}");
            (ef, r_theirs, r_ours)
        })
        .collect();
    for (ef, r_theirs, r_ours) in recalls {
        assert!(
            r_ours >= r_theirs - 0.002,
            "ef {ef}: vitrine's graph reaches recall@20 {r_ours:.4}, hnsw_rs's {r_theirs:.4}"
        );
    }
}

#[test]
fn a_vitrine_graph_is_written_in_hnsw_rs_format_and_hnsw_rs_loads_it() {
    use vitrine::config::IndexBuilder;
    use vitrine::index::hnsw::{self, Graph};
    use vitrine::index::hnsw_dump::Expected;
    let s = spec(32, 200);
    let base = vectors(&s, 3000, 0);
    let queries = vectors(&s, 100, 1);
    let built = store::build_graph_with(&base, PARAMS, 64, IndexBuilder::Vitrine).expect("build");
    assert!(built.hnsw.is_none());
    assert!(
        built.self_recall >= 0.99,
        "self-recall {}",
        built.self_recall
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("index");
    store::write(
        &dir,
        header(base.cols),
        &entries(base.rows),
        &base,
        built.source(PARAMS),
    )
    .expect("write");
    // vitrine's own reader gets the same graph back (lists as sets).
    let loaded = store::load(&dir).expect("load");
    let sets = |g: &Graph| -> Vec<Vec<Vec<u32>>> {
        (0..g.len() as u32)
            .map(|id| {
                (0..=g.level(id))
                    .map(|l| {
                        let mut v = g.links(id, l).to_vec();
                        v.sort_unstable();
                        v
                    })
                    .collect()
            })
            .collect()
    };
    assert_eq!(sets(loaded.vectors.graph()), sets(&built.graph));
    assert_eq!(loaded.vectors.graph().entry(), built.graph.entry());
    // hnsw_rs loads the dump and its own search finds the true neighbours.
    let index_dir = store::readable_dir(&dir);
    let expected = Expected {
        count: base.rows,
        dim: base.cols,
    };
    let exact: Vec<Vec<usize>> = queries
        .iter_rows()
        .map(|q| ids(&loaded.vectors.exact(q, 20)))
        .collect();
    let (points, approx) =
        hnsw::with_loaded(&index_dir, &loaded.header.graph.basename, expected, |h| {
            let approx: Vec<Vec<usize>> = queries
                .iter_rows()
                .map(|q| h.search(q, 20, 64).iter().map(|n| n.d_id).collect())
                .collect();
            (h.get_nb_point(), approx)
        })
        .expect("hnsw_rs loads vitrine's dump");
    assert_eq!(points, base.rows);
    let recall = recall_at_k(&approx, &exact, 20);
    assert!(
        recall >= 0.98,
        "hnsw_rs's search of vitrine's graph: recall@20 {recall}"
    );
}
