//! The gallery in a real PostgreSQL with pgvector (`scripts/pg-dev-server`, which CI
//! runs): index, search, eval and the failures view agree with the in-process index;
//! a re-index never interrupts searches; two shards + finalize equal one job; and
//! each way a server or a table can be wrong is a one-line error, exit 1, with no
//! password shown and nothing user-owned dropped.
//!
//! Without `VITRINE_TEST_PG_URL` each test prints that it skipped and passes — except
//! under CI (`CI` set), where a missing server is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vitrine::config::Config;
use vitrine::data::deepfashion::{Dataset, GalleryProtocol, LoadOptions, Split};
use vitrine::index::build::{self, Gallery, IndexJob};
use vitrine::index::evaluate::{EvalJob, evaluate};
use vitrine::index::postgres::load::{self, PgTarget, Shard};
use vitrine::index::postgres::{PgError, PgUrl};
use vitrine::index::{CheckpointChoice, Searcher};
use vitrine::model::{Embedder, checkpoint};

const URL_VAR: &str = "VITRINE_TEST_PG_URL";

/// The test server's URL, or `None` (printed: skipped) outside CI.
fn pg_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{URL_VAR} is not set under CI: .ci/run must start scripts/pg-dev-server"
            );
            eprintln!(
                "skipped: {URL_VAR} is not set (start a server with `scripts/pg-dev-server -- cargo test --release --test postgres`)"
            );
            None
        }
    }
}

fn admin(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect to the test server")
}

/// A table name of this test process.
fn table(tag: &str) -> String {
    format!("vt_{tag}_{}", std::process::id())
}

struct Base {
    data: PathBuf,
    /// A small run (embedding_dim 16).
    run: PathBuf,
    /// Another run of the same model trained with another seed: other weights.
    other: PathBuf,
    config: Config,
    _tmp: tempfile::TempDir,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let data = common::synth_dataset(40, 32);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = common::tiny_train_config();
        config.model.embedding_dim = 16;
        config.data.workers = 1;
        config.index.pg_url = format!("env:{URL_VAR}");
        // Seeded weights saved as the run's checkpoint: a run folder as training
        // leaves it, without the training time (these tests are about the gallery).
        let trained = |name: &str, seed: u64| made_run(&tmp.path().join(name), &config, seed);
        let run = trained("run", 42);
        let other = trained("other", 43);
        Base {
            data,
            run,
            other,
            config,
            _tmp: tmp,
        }
    })
}

/// A run folder at `run` with `config` and seeded weights as its last checkpoint.
fn made_run(run: &Path, config: &Config, seed: u64) -> PathBuf {
    std::fs::create_dir_all(run.join("checkpoints")).expect("mkdir");
    std::fs::write(
        run.join("config.toml"),
        toml::to_string(config).expect("toml"),
    )
    .expect("config");
    let (_, varmap) =
        Embedder::seeded(config.model.embedder(), &candle_core::Device::Cpu, seed).expect("model");
    checkpoint::save(&varmap, &run.join("checkpoints/last.safetensors")).expect("save");
    run.to_path_buf()
}

/// A copy of `from`'s settings and checkpoints in a fresh folder.
fn copy_run(from: &Path, tmp: &Path, name: &str) -> PathBuf {
    let to = tmp.join(name);
    std::fs::create_dir_all(to.join("checkpoints")).expect("mkdir");
    std::fs::copy(from.join("config.toml"), to.join("config.toml")).expect("config");
    for e in std::fs::read_dir(from.join("checkpoints")).expect("ls") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join("checkpoints").join(e.file_name())).expect("copy");
    }
    to
}

fn job(run: &Path) -> IndexJob {
    let b = base();
    IndexJob {
        run: run.to_path_buf(),
        checkpoint: CheckpointChoice::Auto,
        gallery: Gallery::Dataset {
            root: b.data.clone(),
            protocol: GalleryProtocol::Test,
        },
        settings: b.config.index.clone(),
        data: b.config.data.clone(),
    }
}

fn target(table: &str) -> PgTarget {
    PgTarget {
        url: PgUrl::resolve(&format!("env:{URL_VAR}"), "test").expect("url"),
        table: table.to_string(),
    }
}

fn queries() -> Vec<PathBuf> {
    let ds = Dataset::open(&base().data, LoadOptions::default()).expect("dataset");
    ds.queries(Split::Test)
        .into_iter()
        .map(|q| ds.image_path(q))
        .collect()
}

fn vitrine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(args)
        .output()
        .expect("run vitrine")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exit 1, no panic, every needle present, the password nowhere, and the error on
/// one line.
fn assert_refused(out: &Output, needles: &[&str], password: &str) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(!t.contains(password), "the password leaked: {t}");
    for n in needles {
        assert!(t.contains(n), "no {n:?} in: {t}");
    }
    let error_lines = t
        .lines()
        .filter(|l| l.to_lowercase().starts_with("error"))
        .count();
    assert_eq!(error_lines, 1, "{t}");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Drops every object of gallery `t` (tests own their tables).
fn drop_gallery(url: &str, t: &str) {
    let mut c = admin(url);
    let _ = c.batch_execute(&format!("DROP VIEW IF EXISTS {t}"));
    let versions: Vec<i32> = c
        .query(&format!("SELECT version FROM {t}_versions"), &[])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    for v in versions {
        let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {t}_v{v}"));
    }
    let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {t}_versions"));
}

#[test]
fn search_eval_and_failures_through_postgres_match_the_in_process_index() {
    let Some(url) = pg_url() else { return };
    let b = base();
    let tmp = tempfile::tempdir().expect("tmp");
    let local = copy_run(&b.run, tmp.path(), "local");
    let pg = copy_run(&b.run, tmp.path(), "pg");
    let t = table("same");
    build::build(&job(&local), &mut |_, _| {}).expect("local index");
    let report = load::index(&job(&pg), &target(&t), None, &mut |_, _| {}).expect("pg index");
    assert!(report.live);
    // RUN/index/ records the variable's name, never the URL or its password.
    let record = std::fs::read_to_string(pg.join("index/postgres.json")).expect("record");
    assert!(record.contains(&format!("env:{URL_VAR}")), "{record}");
    assert!(!record.contains(&url), "{record}");
    assert!(!pg.join("index/header.json").exists());

    let a = Searcher::open(&local, &CheckpointChoice::Auto).expect("open local");
    let p = Searcher::open(&pg, &CheckpointChoice::Auto).expect("open pg");
    assert_eq!(a.len(), p.len());
    assert!(p.backend().contains("PostgreSQL"), "{}", p.backend());
    for q in queries().iter().take(5) {
        let v = a.embed_image(q).expect("embed");
        let (x, y) = (
            a.search_vector(&v, 20).expect("local"),
            p.search_vector(&v, 20).expect("pg"),
        );
        let paths =
            |h: &[vitrine::index::SearchHit]| h.iter().map(|h| h.path.clone()).collect::<Vec<_>>();
        assert_eq!(
            paths(&x),
            paths(&y),
            "HNSW + re-rank, query {}",
            q.display()
        );
        for (h, g) in x.iter().zip(&y) {
            assert!((h.score - g.score).abs() < 1e-6, "{h:?} {g:?}");
        }
        let (x, y) = (
            a.search_exact(&v, 20).expect("local"),
            p.search_exact(&v, 20).expect("pg"),
        );
        assert_eq!(paths(&x), paths(&y), "exact, query {}", q.display());
    }
    // `search --json` through the binary: the same top 20.
    let query = &queries()[0];
    let top = |run: &Path| {
        let out = vitrine(&["search", "--run", s(run), s(query), "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| h["path"].as_str().expect("path").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(top(&local), top(&pg));
    assert_eq!(top(&pg).len(), p.len().min(20));

    // eval: the index measured through PostgreSQL gives the in-process figures.
    let eval = |run: &Path| {
        evaluate(
            &EvalJob {
                run: run.to_path_buf(),
                data: b.data.clone(),
                protocol: GalleryProtocol::Test,
                checkpoint: Some(CheckpointChoice::Auto),
                raw_pixels: None,
                settings: b.config.index.clone(),
                loader: b.config.data.clone(),
                by_category: false,
                failures: 0,
            },
            &mut |_, _, _| {},
        )
        .expect("eval")
    };
    let (x, y) = (eval(&local), eval(&pg));
    assert_eq!(x.index_backend.as_deref(), Some("in-process HNSW"));
    assert!(
        y.index_backend
            .as_deref()
            .is_some_and(|b| b.starts_with("PostgreSQL")),
        "{:?}",
        y.index_backend
    );
    assert_eq!(x.top_k, y.top_k);
    let (xk, yk) = (
        x.index_top_k.clone().expect("index top-k"),
        y.index_top_k.clone().expect("index top-k"),
    );
    for k in ["1", "20"] {
        assert!((xk[k] - yk[k]).abs() <= 0.005, "top-{k}: {x:?} {y:?}");
    }
    assert!(
        y.index_recall_at_k.is_some_and(|r| r >= 0.99),
        "{:?}",
        y.index_recall_at_k
    );

    // The failures view ranks the same with the gallery read from PostgreSQL.
    let infos = vitrine::tui::workers::dataset::read_dataset(&b.data, GalleryProtocol::Test, 1)
        .expect("dataset")
        .queries;
    let rank = |searcher: &Searcher| {
        vitrine::tui::workers::failures::rank_queries(
            searcher,
            &infos,
            &b.config.data,
            16,
            &AtomicBool::new(false),
            &mut |_, _| {},
        )
        .expect("rank")
        .expect("not cancelled")
    };
    let (x, y) = (rank(&a), rank(&p));
    assert_eq!(x.categories, y.categories);
    assert_eq!(x.gallery, y.gallery);
    let ranks = |r: &vitrine::tui::tabs::failures::FailuresReport| {
        r.rows.iter().map(|row| row.rank).collect::<Vec<_>>()
    };
    assert_eq!(ranks(&x), ranks(&y));
    drop_gallery(&url, &t);
}

#[test]
fn a_reindex_never_interrupts_searches() {
    let Some(url) = pg_url() else { return };
    let b = base();
    let tmp = tempfile::tempdir().expect("tmp");
    let run = copy_run(&b.run, tmp.path(), "run");
    let t = table("reindex");
    let first = load::index(&job(&run), &target(&t), None, &mut |_, _| {}).expect("index");
    let searcher = Searcher::open(&run, &CheckpointChoice::Auto).expect("open");
    let v = searcher.embed_image(&queries()[0]).expect("embed");
    let expected = first.count.min(20);
    let stop = AtomicBool::new(false);
    let (searches, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut last = 0;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match searcher.search_vector(&v, 20) {
                    Ok(hits) if hits.len() == expected => {}
                    Ok(hits) => {
                        eprintln!("{} hits during a re-index", hits.len());
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("search failed during a re-index: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                searches.fetch_add(1, Ordering::Relaxed);
            }
        });
        for _ in 0..2 {
            let r = load::index(&job(&run), &target(&t), None, &mut |_, _| {}).expect("re-index");
            assert_eq!(r.dropped, vec![r.version - 1]);
            last = r.version;
        }
        // A few more searches on the last version (bounded: never hang the suite).
        let n = searches.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while searches.load(Ordering::Relaxed) < n + 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    eprintln!("{searches:?} searches during two re-indexes");
    assert!(searches.load(Ordering::Relaxed) >= 10, "{searches:?}");
    assert_eq!(last, first.version + 2);
    // The searcher follows the live version; the replaced tables are gone.
    searcher.search_vector(&v, 20).expect("search");
    let mut c = admin(&url);
    let tables: Vec<String> = c
        .query(
            "SELECT relname::text FROM pg_class WHERE relname ~ $1 AND relkind = 'r' ORDER BY 1",
            &[&format!("^{t}_v[0-9]+$")],
        )
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, vec![format!("{t}_v{last}")]);
    drop_gallery(&url, &t);
}

#[test]
fn two_shards_and_finalize_equal_one_job() {
    let Some(url) = pg_url() else { return };
    let b = base();
    let tmp = tempfile::tempdir().expect("tmp");
    let (whole, sharded) = (
        copy_run(&b.run, tmp.path(), "whole"),
        copy_run(&b.run, tmp.path(), "sharded"),
    );
    let (tw, ts) = (table("whole"), table("sharded"));
    load::index(&job(&whole), &target(&tw), None, &mut |_, _| {}).expect("one job");
    let one = Shard { index: 1, count: 2 };
    let two = Shard { index: 2, count: 2 };
    let first = load::index(&job(&sharded), &target(&ts), Some(one), &mut |_, _| {}).expect("1/2");
    assert!(!first.live);
    assert_eq!(first.shards_done, vec![1]);
    // Not live yet: finalize names the missing shard, search finds no index.
    let err = load::finalize(&sharded, &target(&ts)).expect_err("a shard is missing");
    assert!(err.to_string().contains("lacks shard 2/2"), "{err}");
    assert!(Searcher::open(&sharded, &CheckpointChoice::Auto).is_err());
    let second = load::index(&job(&sharded), &target(&ts), Some(two), &mut |_, _| {}).expect("2/2");
    assert_eq!(second.version, first.version);
    assert_eq!(second.shards_done, vec![1, 2]);
    // A shard loaded twice is refused, not duplicated.
    let again = load::index(&job(&sharded), &target(&ts), Some(two), &mut |_, _| {});
    assert!(
        matches!(
            again,
            Err(build::BuildError::Postgres(PgError::ShardDone { .. }))
        ),
        "{again:?}"
    );
    let done = load::finalize(&sharded, &target(&ts)).expect("finalize");
    assert!(done.live);

    // The same rows…
    let mut c = admin(&url);
    let mut rows = |t: &str| {
        c.query(
            &format!("SELECT id, path, item_id, category, embedding::text FROM {t} ORDER BY id"),
            &[],
        )
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, String>(4),
            )
        })
        .collect::<Vec<_>>()
    };
    let (x, y) = (rows(&tw), rows(&ts));
    assert_eq!(x.len(), done.count);
    assert!(!x.is_empty());
    assert_eq!(x, y);
    // …and the same search results.
    let (a, p) = (
        Searcher::open(&whole, &CheckpointChoice::Auto).expect("whole"),
        Searcher::open(&sharded, &CheckpointChoice::Auto).expect("sharded"),
    );
    for q in queries().iter().take(5) {
        let v = a.embed_image(q).expect("embed");
        assert_eq!(
            a.search_vector(&v, 20).expect("whole"),
            p.search_vector(&v, 20).expect("sharded")
        );
    }
    drop_gallery(&url, &tw);
    drop_gallery(&url, &ts);
}

/// `url` with its password replaced by `password`.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (user, host) = rest.rsplit_once('@').expect("user@host");
    let user = user.split(':').next().expect("user");
    format!("{scheme}://{user}:{password}@{host}")
}

fn password_of(url: &str) -> String {
    let rest = url.split_once("://").expect("scheme").1;
    let user = rest.rsplit_once('@').expect("user@host").0;
    user.split_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default()
}

/// A URL naming another database of the same server.
fn with_database(url: &str, db: &str) -> String {
    let (head, _) = url.rsplit_once('/').expect("database");
    format!("{head}/{db}")
}

#[test]
fn server_and_table_errors_are_one_line_exit_1_and_never_drop_user_data() {
    let Some(url) = pg_url() else { return };
    let b = base();
    let tmp = tempfile::tempdir().expect("tmp");
    let run = copy_run(&b.run, tmp.path(), "run");
    let secret = password_of(&url);
    let index = |pg_url: &str, table: &str| {
        vitrine(&[
            "index",
            "--run",
            s(&run),
            "--data",
            s(&b.data),
            "--backend",
            "postgres",
            "--pg-url",
            pg_url,
            "--table",
            table,
        ])
    };
    // Nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = format!("postgres://vitrine:{secret}@127.0.0.1:{port}/vitrine_test");
    assert_refused(
        &index(&down, "vt_x"),
        &[&format!(
            "cannot reach PostgreSQL at postgres://vitrine@127.0.0.1:{port}/vitrine_test"
        )],
        &secret,
    );
    // A wrong password.
    let wrong = with_password(&url, "not-the-password");
    assert_refused(
        &index(&wrong, "vt_x"),
        &["refused the login"],
        "not-the-password",
    );
    // A database without pgvector.
    let db = format!("vt_noext_{}", std::process::id());
    let mut c = admin(&url);
    c.batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create database");
    assert_refused(
        &index(&with_database(&url, &db), "vt_x"),
        &["CREATE EXTENSION vector"],
        &secret,
    );
    c.batch_execute(&format!("DROP DATABASE {db}"))
        .expect("drop database");
    // A table of the same name that vitrine did not make: refused, and untouched.
    let foreign = table("foreign");
    c.batch_execute(&format!(
        "CREATE TABLE {foreign} (note text); INSERT INTO {foreign} VALUES ('mine')"
    ))
    .expect("user table");
    assert_refused(
        &index(&url, &foreign),
        &[&format!("{foreign} in "), "was not made by vitrine"],
        &secret,
    );
    let kept: String = c
        .query_one(&format!("SELECT note FROM {foreign}"), &[])
        .expect("the user's table is still there")
        .get(0);
    assert_eq!(kept, "mine");
    // Also a foreign `_versions` table.
    let t = table("errors");
    c.batch_execute(&format!("CREATE TABLE {t}_versions (x int)"))
        .expect("user table");
    assert_refused(&index(&url, &t), &[&format!("{t}_versions in ")], &secret);
    c.batch_execute(&format!("DROP TABLE {t}_versions; DROP TABLE {foreign}"))
        .expect("cleanup");

    // Index the run; then another run with other weights re-indexes the same table:
    // searching the first run is refused as stale.
    let out = index(&format!("env:{URL_VAR}"), &t);
    assert!(out.status.success(), "{}", text(&out));
    let query = queries()[0].clone();
    let search = |run: &Path| vitrine(&["search", "--run", s(run), s(&query)]);
    assert!(search(&run).status.success());
    let other = copy_run(&b.other, tmp.path(), "other");
    let out = vitrine(&[
        "index",
        "--run",
        s(&other),
        "--data",
        s(&b.data),
        "--backend",
        "postgres",
        "--table",
        &t,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_refused(&search(&run), &["made by other weights", &t], &secret);

    // A run of another embedding size re-indexes it: a dimension mismatch.
    let mut config = b.config.clone();
    config.model.embedding_dim = 24;
    let wide = made_run(&tmp.path().join("wide"), &config, 42);
    load::index(&job(&wide), &target(&t), None, &mut |_, _| {}).expect("index wide");
    assert_refused(
        &search(&run),
        &["holds 24-d vectors", "embeds 16-d"],
        &secret,
    );
    // Finalize with nothing being loaded, then a missing server for search.
    let err = load::finalize(&run, &target(&t)).expect_err("nothing to finalize");
    assert!(err.to_string().contains("no version being loaded"), "{err}");
    drop_gallery(&url, &t);
}

#[test]
fn a_lost_connection_fails_one_search_and_the_next_reconnects() {
    let Some(url) = pg_url() else { return };
    let b = base();
    let tmp = tempfile::tempdir().expect("tmp");
    let run = copy_run(&b.run, tmp.path(), "run");
    let t = table("lost");
    // Its own application name, so only this test's connection is cut.
    let app = format!("vt_lost_{}", std::process::id());
    let target = PgTarget {
        url: PgUrl::resolve(&format!("{url}?application_name={app}"), "test").expect("url"),
        table: t.clone(),
    };
    load::index(&job(&run), &target, None, &mut |_, _| {}).expect("index");
    // The record holds the URL without its password: a search takes it from
    // PGPASSWORD, and without it the login is refused.
    let record = std::fs::read_to_string(run.join("index/postgres.json")).expect("record");
    let secret = password_of(&url);
    assert!(
        !record.contains(&secret) && record.contains(&app),
        "{record}"
    );
    let search = |password: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrine"));
        cmd.args(["search", "--run", s(&run), s(&queries()[0])]);
        cmd.env_remove("PGPASSWORD");
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        cmd.output().expect("run vitrine")
    };
    assert_refused(&search(None), &["refused the login"], &secret);
    let out = search(Some(&secret));
    assert!(out.status.success(), "{}", text(&out));

    // The connection of an open gallery is cut by the server.
    let record: vitrine::index::postgres::PgRecord =
        serde_json::from_str(&record).expect("record json");
    let gallery =
        vitrine::index::postgres::PgGallery::open(target.url.clone(), &record).expect("open");
    let v: Vec<f32> = (0..16).map(|i| (i as f32).sin()).collect();
    let params = vitrine::index::SearchParams::default();
    let accept = |_: &vitrine::index::postgres::gallery::LiveVersion| Ok(());
    gallery.search(&v, 20, params, &accept).expect("search");
    let mut c = admin(&url);
    let cut: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1) t",
            &[&app],
        )
        .expect("terminate")
        .get(0);
    assert_eq!(cut, 1);
    let err = gallery
        .search(&v, 20, params, &accept)
        .expect_err("the connection is gone");
    let shown = err.to_string();
    assert!(matches!(err, PgError::Lost { .. }), "{shown}");
    assert!(
        shown.contains("127.0.0.1") && !shown.contains(&secret),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 1, "{shown}");
    let hits = gallery
        .search(&v, 20, params, &accept)
        .expect("reconnected");
    assert_eq!(hits.len(), record.count.min(20));
    drop_gallery(&url, &t);
}
