//! The dashboard without a terminal: snapshots of every tab (ratatui `TestBackend` +
//! insta, under tests/snapshots/) from fixed data, the key map, and a replay of a
//! recorded `metrics.jsonl` through the Train view.

use std::path::{Path, PathBuf};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use vitrine::config::Config;
use vitrine::config::PlotMarker;
use vitrine::data::deepfashion::{CategorySummary, SplitCounts, SplitSummary};
use vitrine::index::evaluate::CategoryScore;
use vitrine::run::folder::ControlRequest;
use vitrine::run::settings::diff;
use vitrine::theme::Theme;
use vitrine::train::events::{RunStarted, TrainEvent, ValMetrics};
use vitrine::train::metrics_log::{MetricsFollower, read_all};
use vitrine::train::runs::{RunStatus, RunSummary};
use vitrine::tui::app::{Action, App, AppOptions, Command, Tab, WorkerEvent};
use vitrine::tui::keymap::{KEYS, map_key};
use vitrine::tui::tabs::dataset::{DatasetInfo, ImageInfo, Loadable, TripletRow};
use vitrine::tui::tabs::failures::{FailureRow, FailuresReport, FailuresUpdate, GalleryHit};
use vitrine::tui::tabs::runs::{RunCurves, RunEntry, RunsListing};
use vitrine::tui::tabs::search::{HitInfo, IndexStatus, ModelLoad, SearchResults};
use vitrine::tui::tabs::train::{Phase, TrainState};
use vitrine::tui::tabs::triplets::TripletScore;
use vitrine::tui::thumb_cache::Thumb;
use vitrine::tui::views;

const METRICS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tui/metrics.jsonl"
);

const CATEGORIES: [(&str, &str); 10] = [
    ("DRESSES", "Maxi_Dress"),
    ("DRESSES", "Mini_Dress"),
    ("DRESSES", "Shirt_Dress"),
    ("TOPS", "Blouse"),
    ("TOPS", "Hoodie"),
    ("TOPS", "T_Shirt"),
    ("TOPS", "Tank_Top"),
    ("TROUSERS", "Jeans"),
    ("TROUSERS", "Shorts"),
    ("TROUSERS", "Skirt"),
];

fn counts(train: usize, val: usize, test: usize) -> SplitCounts {
    SplitCounts { train, val, test }
}

/// The default synthetic set's figures, made by hand.
fn summary() -> SplitSummary {
    SplitSummary {
        protocol: "test".into(),
        pairs: counts(587, 297, 280),
        items: counts(200, 100, 100),
        consumer: counts(405, 206, 192),
        shop: counts(291, 142, 146),
        query: 192,
        gallery: 146,
        images: 1382,
        missing: 2,
        dropped_pairs: 3,
        categories: CATEGORIES
            .iter()
            .enumerate()
            .map(|(i, (big, small))| CategorySummary {
                big: (*big).into(),
                small: (*small).into(),
                items: 30 + 3 * i,
                per_split: counts(15, 8, 7 + i),
            })
            .collect(),
    }
}

fn image(item: usize, file: &str) -> ImageInfo {
    let (big, small) = CATEGORIES[item % CATEGORIES.len()];
    ImageInfo {
        path: PathBuf::from(format!(
            "data/synth/img/{big}/{small}/id_{item:08}/{file}.jpg"
        )),
        item_id: format!("id_{item:08}"),
        category: small.into(),
        big: big.into(),
        bbox: None,
    }
}

fn dataset() -> DatasetInfo {
    let triplets = (0..40)
        .map(|i| TripletRow {
            anchor: image(i, "comsumer_01"),
            positive: image(i, "shop_01"),
            negative: image(i + 10, "shop_02"),
        })
        .collect();
    let queries = (100..130).map(|i| image(i, "comsumer_02")).collect();
    DatasetInfo {
        root: PathBuf::from("data/synth"),
        summary: summary(),
        triplets,
        queries,
    }
}

fn fixture_events() -> Vec<TrainEvent> {
    read_all(Path::new(METRICS)).expect("fixture metrics.jsonl")
}

fn options(images: bool) -> AppOptions {
    let mut o = AppOptions::new(PathBuf::from("runs/demo"), PathBuf::from("data/synth"));
    o.images = images;
    o
}

/// An app with the recorded run, the dataset, scored triplets and an index.
fn app_with_data(images: bool) -> App {
    let mut app = App::new(options(images));
    app.update(Action::Worker(WorkerEvent::Train(fixture_events())));
    app.update(Action::Worker(WorkerEvent::Dataset(Box::new(
        Ok(dataset()),
    ))));
    app.update(Action::Worker(WorkerEvent::Index(IndexStatus::Ready {
        count: 146,
    })));
    app
}

fn scores() -> WorkerEvent {
    WorkerEvent::Scores {
        weights: "checkpoint last (step 54)".into(),
        scores: (0..40)
            .map(|i| {
                let d_ap = 0.4 + (i % 7) as f32 * 0.1;
                let d_an = 0.5 + (i % 5) as f32 * 0.12;
                (
                    i,
                    TripletScore {
                        d_ap,
                        d_an,
                        loss: (d_ap - d_an + 0.5).max(0.0),
                    },
                )
            })
            .collect(),
        done: 40,
        total: 40,
    }
}

fn results() -> SearchResults {
    let query = image(104, "comsumer_02");
    SearchResults {
        query_item: Some(query.item_id.clone()),
        query: query.path,
        hits: (0..20)
            .map(|k| {
                let item = if k == 0 || k == 3 { 104 } else { 200 + k };
                let img = image(item, if k == 3 { "shop_02" } else { "shop_01" });
                HitInfo {
                    rank: k + 1,
                    score: 0.95 - k as f32 * 0.02,
                    is_match: item == 104,
                    path: img.path,
                    item_id: img.item_id,
                    category: format!("{}/{}", img.big, img.category),
                }
            })
            .collect(),
        millis: 3.0,
    }
}

fn render(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    t.draw(|f| {
        views::draw(f, app, &Theme::default());
    })
    .expect("draw");
    t
}

fn screen_text(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    let mut s = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

/// Whether some cell is drawn in `c` (a picture's colour).
fn has_colour(t: &Terminal<TestBackend>, c: ratatui::style::Color) -> bool {
    t.backend()
        .buffer()
        .content
        .iter()
        .any(|cell| cell.fg == c || cell.bg == c)
}

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

#[test]
fn snapshot_train_tab() {
    let app = app_with_data(false);
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("train_{w}x{h}"), render(&app, w, h).backend());
    }
}

/// The recorded run as if its `started` event had described its device (the
/// fixture was written before it did, and draws as it did then).
fn fixture_events_on(
    device: &str,
    name: &str,
    detail: &str,
    memory: u64,
    free: u64,
) -> Vec<TrainEvent> {
    let mut events = fixture_events();
    let TrainEvent::Started(RunStarted {
        device: d,
        device_name,
        device_detail,
        device_memory_bytes,
        device_memory_free_bytes,
        ..
    }) = &mut events[0]
    else {
        panic!("the fixture starts with a started event")
    };
    *d = device.into();
    *device_name = name.into();
    *device_detail = detail.into();
    *device_memory_bytes = memory;
    *device_memory_free_bytes = Some(free);
    events
}

#[test]
fn snapshot_train_tab_names_its_device_and_memory() {
    let gpu = fixture_events_on(
        "cuda:0",
        "NVIDIA H200",
        "compute 9.0",
        150_110_011_392,
        149_470_183_424,
    );
    let mut app = App::new(options(false));
    app.update(Action::Worker(WorkerEvent::Train(gpu)));
    for (w, h) in SIZES {
        let t = render(&app, w, h);
        let text = screen_text(&t);
        assert!(
            text.contains("cuda:0 · NVIDIA H200 · compute 9.0 · 139.8 GiB (139.2 free)"),
            "{text}"
        );
        insta::assert_snapshot!(format!("train_device_gpu_{w}x{h}"), t.backend());
    }
    // A long CPU name: the full line where it fits, without the details where not.
    let cpu = fixture_events_on(
        "cpu",
        "AMD EPYC 7763 64-Core Processor",
        "2 threads, AVX2+FMA",
        8_324_000_000,
        5_100_000_000,
    );
    let mut app = App::new(options(false));
    app.update(Action::Worker(WorkerEvent::Train(cpu)));
    let wide = screen_text(&render(&app, 160, 48));
    assert!(
        wide.contains(
            "cpu · AMD EPYC 7763 64-Core Processor · 2 threads, AVX2+FMA · 7.8 GiB (4.7 free)"
        ),
        "{wide}"
    );
    let t = render(&app, 80, 24);
    let narrow = screen_text(&t);
    assert!(
        narrow.contains("cpu · AMD EPYC 7763 64-Core Processor · 7.8 GiB"),
        "{narrow}"
    );
    assert!(!narrow.contains("AVX2"), "{narrow}");
    insta::assert_snapshot!("train_device_cpu_80x24", t.backend());
}

#[test]
fn snapshot_train_tab_full_history_ascii() {
    let mut o = options(false);
    o.plot_marker = PlotMarker::Ascii;
    let mut app = App::new(o);
    app.update(Action::Worker(WorkerEvent::Train(fixture_events())));
    app.update(Action::ToggleHistory);
    insta::assert_snapshot!("train_history_ascii_80x24", render(&app, 80, 24).backend());
}

#[test]
fn snapshot_train_warming_up() {
    let mut app = App::new(options(false));
    let events: Vec<TrainEvent> = fixture_events().into_iter().take(2).collect();
    assert!(matches!(events[0], TrainEvent::Started(_)));
    app.update(Action::Worker(WorkerEvent::Train(events)));
    app.update(Action::Worker(WorkerEvent::Trainer {
        pid: Some(4242),
        control: ControlRequest::Run,
    }));
    assert_eq!(app.train.phase(), Phase::WarmingUp);
    let t = render(&app, 80, 24);
    assert!(screen_text(&t).contains("warming up"));
    insta::assert_snapshot!("train_warming_up_80x24", t.backend());
}

/// A run like the one that showed the problem: a normalised-softmax train loss
/// (7.99 → 3.3) beside a triplet val loss (≈ 0.5) that shares no axis with it, and
/// val top-k measured on a gallery a third the size of the test one.
fn softmax_run_events() -> Vec<TrainEvent> {
    let started = serde_json::from_value(serde_json::json!({
        "event": "started", "run": "softmax", "device": "cpu", "backbone": "resnet18",
        "image_size": 64, "batch": 16, "epochs": 6, "steps_per_epoch": 100,
        "total_steps": 600, "start_step": 0, "resumed": false, "loss": "norm_softmax",
        "mining": "batch_hard", "sampler": "pk", "batch_images": 64, "params": 11_000_000,
        "trainable_params": 8_000_000, "train_triplets": 1600, "val_queries": 200,
        "val_gallery": 198, "time": 0.0,
    }))
    .expect("a started event");
    let val = |loss: f32, top1: f64, top20: f64| ValMetrics {
        val_loss: loss,
        val_top1: top1,
        val_top20: top20,
        val_map_at_r: top1,
    };
    let mut events = vec![started, TrainEvent::Baseline(val(0.52, 0.051, 0.303))];
    // Validations spread over the run: epochs 2 and 4 were not due one (NaN).
    let epochs = [
        val(0.51, 0.081, 0.384),
        ValMetrics::NONE,
        val(0.49, 0.121, 0.471),
        ValMetrics::NONE,
        val(0.50, 0.147, 0.512),
        val(0.48, 0.158, 0.525),
    ];
    for (epoch, val) in epochs.into_iter().enumerate() {
        for i in 1..=100 {
            let step = epoch * 100 + i;
            let x = step as f64;
            let loss = 3.3 + 4.69 * (-x / 150.0).exp() + 0.25 * (x * 0.7).sin();
            events.push(TrainEvent::Step {
                step,
                epoch,
                loss: loss as f32,
                active: 0.9,
                d_ap: 0.6,
                d_an: 0.9,
                lr: 1e-4,
                grad_norm: 2.0,
                spread: Some(0.3),
                triplets_per_s: 40.0,
                images_per_s: Some(120.0),
                elapsed_s: x,
            });
        }
        events.push(TrainEvent::Epoch {
            epoch,
            step: (epoch + 1) * 100,
            train_loss: 3.5,
            val,
            seconds: 100.0,
        });
    }
    events.push(TrainEvent::Done {
        step: 600,
        epoch: 5,
        reason: vitrine::train::events::StopReason::TimeLimit,
        best_val_top20: 0.525,
        seconds: 600.0,
    });
    events
}

/// The Train tab draws validation on a chart of its own (val top-20 and top-1 by
/// step, the untrained model's as reference lines) and says how large the val
/// gallery is against the test gallery.
#[test]
fn snapshot_train_validation_chart_and_gallery_sizes() {
    let mut app = App::new(options(false));
    app.update(Action::Worker(WorkerEvent::Train(softmax_run_events())));
    // Epochs without a validation put no point on the chart.
    let steps: Vec<f64> = app.train.val_top20.iter().map(|p| p.0).collect();
    assert_eq!(steps, [100.0, 300.0, 500.0, 600.0]);
    let mut data = dataset();
    data.summary.shop.val = 198;
    data.summary.gallery = 561;
    app.update(Action::Worker(WorkerEvent::Dataset(Box::new(Ok(data)))));
    for (w, h) in SIZES {
        let t = render(&app, w, h);
        let text = screen_text(&t);
        assert!(text.contains("Val retrieval"), "{text}");
        // Shares on their own axis (52.5% best, padded); the loss axis is not
        // stretched down to the val loss (≈ 0.5).
        assert!(text.contains("│54.9%│"), "{text}");
        assert!(text.contains("│2.89│") && !text.contains("│0."), "{text}");
        if w >= 120 {
            assert!(text.contains("val gallery 198 images (test 561)"), "{text}");
            assert!(text.contains("smaller gallery"), "{text}");
        } else {
            assert!(text.contains("gallery val 198 · test 561"), "{text}");
        }
        insta::assert_snapshot!(format!("train_validation_{w}x{h}"), t.backend());
    }
    // A dataset that is not the run's (another val split) gives the val size alone.
    let mut other = dataset();
    other.summary.gallery = 561;
    app.update(Action::Worker(WorkerEvent::Dataset(Box::new(Ok(other)))));
    let text = screen_text(&render(&app, 80, 24));
    assert!(
        text.contains("val gallery 198 images") && !text.contains("561"),
        "{text}"
    );
}

#[test]
fn snapshot_dataset_tab() {
    let mut app = app_with_data(false);
    app.update(Action::GoTab(Tab::Dataset));
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("dataset_{w}x{h}"), render(&app, w, h).backend());
    }
}

#[test]
fn snapshot_triplets_tab() {
    let mut app = app_with_data(false);
    let commands = app.update(Action::GoTab(Tab::Triplets));
    assert_eq!(commands, vec![Command::ScoreTriplets]);
    app.update(Action::Worker(scores()));
    app.update(Action::Down);
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("triplets_{w}x{h}"), render(&app, w, h).backend());
    }
    // Hardest first starts at the hardest row, not at the old selection.
    app.update(Action::ToggleHardest);
    let (i, _) = app.triplets.selected_row().expect("a row");
    let hardest = app
        .triplets
        .view
        .iter()
        .map(|&v| app.triplets.scores[v].expect("scored").loss)
        .fold(f32::MIN, f32::max);
    assert_eq!(app.triplets.scores[i].expect("scored").loss, hardest);
    assert_eq!(app.triplets.selected, 0);
    // Filtered to one small category.
    app.update(Action::NextFilter);
    let (_, row) = app.triplets.selected_row().expect("a row");
    assert_eq!(row.anchor.category, "Blouse");
    let losses: Vec<f32> = app
        .triplets
        .view
        .iter()
        .map(|&i| app.triplets.scores[i].expect("scored").loss)
        .collect();
    assert!(losses.windows(2).all(|w| w[0] >= w[1]), "{losses:?}");
    insta::assert_snapshot!(
        "triplets_hardest_blouse_80x24",
        render(&app, 80, 24).backend()
    );
}

#[test]
fn snapshot_search_tab() {
    let mut app = app_with_data(false);
    app.update(Action::GoTab(Tab::Search));
    for (w, h) in SIZES {
        insta::assert_snapshot!(
            format!("search_empty_{w}x{h}"),
            render(&app, w, h).backend()
        );
    }
    for _ in 0..4 {
        app.update(Action::Down);
    }
    let commands = app.update(Action::Enter);
    assert_eq!(
        commands,
        vec![Command::Search {
            path: image(104, "comsumer_02").path,
            item: Some("id_00000104".into()),
        }]
    );
    app.update(Action::Worker(WorkerEvent::Search(Ok(results()))));
    app.update(Action::Right);
    app.update(Action::Down);
    assert_eq!(app.search.hit, 6);
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("search_{w}x{h}"), render(&app, w, h).backend());
    }
    app.update(Action::Up);
    app.update(Action::Left);
    app.update(Action::Right);
    app.update(Action::Right);
    app.update(Action::Right);
    assert_eq!(app.search.hit, 3);
    app.update(Action::Enter);
    assert!(app.search.detail);
    let t = render(&app, 80, 24);
    let text = screen_text(&t);
    assert!(
        text.contains("id_00000104") && text.contains("0.8900"),
        "{text}"
    );
    insta::assert_snapshot!("search_detail_80x24", t.backend());
}

#[test]
fn thumbnails_are_drawn_in_cells_and_survive_redraws() {
    let mut app = app_with_data(true);
    app.update(Action::GoTab(Tab::Search));
    app.update(Action::Enter);
    let mut r = results();
    r.query = app.search.queries[0].path.clone();
    r.query_item = Some(app.search.queries[0].item_id.clone());
    app.update(Action::Worker(WorkerEvent::Search(Ok(r))));
    // First frame: placeholders; it reports what it wanted.
    let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
    let mut wanted = Vec::new();
    t.draw(|f| wanted = views::draw(f, &app, &Theme::default()))
        .expect("draw");
    assert_eq!(wanted.len(), 21, "the query and 20 results");
    let commands = app.update(Action::NeedThumbs(wanted.clone()));
    assert_eq!(commands.len(), 21);
    // A worker would decode the files; here solid pictures, as half blocks.
    let picker = ratatui_image::picker::Picker::halfblocks();
    for (n, key) in wanted.iter().enumerate() {
        let c = (n * 40 % 256) as u8;
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            20,
            40,
            image::Rgb([c, 255 - c, 128]),
        ));
        let p = picker
            .new_protocol(
                img,
                ratatui::layout::Size::new(key.cols, key.rows),
                ratatui_image::Resize::Fit(None),
            )
            .expect("protocol");
        app.update(Action::Worker(WorkerEvent::Thumb(
            key.clone(),
            Ok(Thumb(std::sync::Arc::new(p))),
        )));
    }
    for _ in 0..2 {
        let mut again = Vec::new();
        t.draw(|f| again = views::draw(f, &app, &Theme::default()))
            .expect("draw");
        assert!(again.is_empty(), "every thumbnail is cached");
        assert!(
            has_colour(&t, ratatui::style::Color::Rgb(0, 255, 128)),
            "pictures drawn"
        );
    }
    insta::assert_snapshot!("search_thumbnails_80x24", t.backend());
    // A tab switch and back keeps them.
    app.update(Action::GoTab(Tab::Train));
    app.update(Action::GoTab(Tab::Search));
    let mut again = Vec::new();
    t.draw(|f| again = views::draw(f, &app, &Theme::default()))
        .expect("draw");
    assert!(again.is_empty());
}

#[test]
fn snapshot_overlays_and_small_terminal() {
    let mut app = app_with_data(false);
    app.update(Action::ToggleHelp);
    let t = render(&app, 80, 24);
    let text = screen_text(&t);
    for (keys, _, _) in KEYS {
        assert!(text.contains(keys), "help lists `{keys}`");
    }
    insta::assert_snapshot!("help_80x24", t.backend());
    app.update(Action::ToggleHelp);
    app.update(Action::Worker(WorkerEvent::Trainer {
        pid: Some(4242),
        control: ControlRequest::Run,
    }));
    app.update(Action::Quit);
    assert!(app.quit_prompt && !app.should_quit);
    insta::assert_snapshot!("quit_prompt_80x24", render(&app, 80, 24).backend());
    let t = render(&app, 79, 23);
    assert!(screen_text(&t).contains("enlarge the terminal"));
    insta::assert_snapshot!("too_small_79x23", t.backend());
    // Tiny sizes never panic.
    for (w, h) in [(1, 1), (10, 3), (40, 10), (79, 40), (200, 23)] {
        render(&app, w, h);
    }
}

#[test]
fn every_theme_renders_every_tab() {
    let mut app = app_with_data(false);
    app.update(Action::Worker(WorkerEvent::Search(Ok(results()))));
    app.update(Action::Worker(WorkerEvent::Runs(Ok(runs_listing()))));
    app.update(Action::GoTab(Tab::Runs));
    app.update(Action::ToggleMark);
    for name in Theme::builtin_names() {
        let theme = Theme::load(name).expect("theme");
        for tab in Tab::ALL {
            app.update(Action::GoTab(tab));
            let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
            t.draw(|f| {
                views::draw(f, &app, &theme);
            })
            .expect("draw");
            assert!(screen_text(&t).contains(tab.title()));
        }
    }
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn key_map() {
    let mut app = App::new(options(false));
    let map = |app: &App, code| map_key(app, key(code));
    assert!(matches!(
        map(&app, KeyCode::Char('3')),
        Some(Action::GoTab(Tab::Triplets))
    ));
    assert!(matches!(map(&app, KeyCode::Tab), Some(Action::NextTab)));
    assert!(matches!(map(&app, KeyCode::BackTab), Some(Action::PrevTab)));
    assert!(matches!(
        map(&app, KeyCode::Char('?')),
        Some(Action::ToggleHelp)
    ));
    assert!(matches!(map(&app, KeyCode::Char('q')), Some(Action::Quit)));
    assert!(matches!(
        map(&app, KeyCode::Char('t')),
        Some(Action::StartTraining)
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('p')),
        Some(Action::TogglePause)
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('s')),
        Some(Action::StopTraining)
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('i')),
        Some(Action::BuildIndex)
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('h')),
        Some(Action::ToggleHistory)
    ));
    assert!(map(&app, KeyCode::Char('j')).is_none(), "no list on Train");
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(matches!(map_key(&app, ctrl_c), Some(Action::Quit)));
    let mut release = key(KeyCode::Char('q'));
    release.kind = KeyEventKind::Release;
    assert!(map_key(&app, release).is_none());

    app.update(Action::GoTab(Tab::Triplets));
    assert!(matches!(map(&app, KeyCode::Char('j')), Some(Action::Down)));
    assert!(matches!(map(&app, KeyCode::Char('k')), Some(Action::Up)));
    assert!(matches!(
        map(&app, KeyCode::Char('f')),
        Some(Action::NextFilter)
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('F')),
        Some(Action::PrevFilter)
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('o')),
        Some(Action::ToggleHardest)
    ));
    assert!(matches!(
        map(&app, KeyCode::PageDown),
        Some(Action::PageDown)
    ));

    app.update(Action::GoTab(Tab::Search));
    assert!(matches!(map(&app, KeyCode::Enter), Some(Action::Enter)));
    assert!(matches!(map(&app, KeyCode::Left), Some(Action::Left)));
    assert!(matches!(
        map(&app, KeyCode::Char('/')),
        Some(Action::StartInput)
    ));
    app.update(Action::StartInput);
    // While typing, letters are text, not commands.
    assert!(matches!(
        map(&app, KeyCode::Char('q')),
        Some(Action::Input('q'))
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('t')),
        Some(Action::Input('t'))
    ));
    for c in "/x/a.jpg".chars() {
        app.update(Action::Input(c));
    }
    app.update(Action::InputBackspace);
    app.update(Action::Input('g'));
    let commands = app.update(Action::Enter);
    assert_eq!(
        commands,
        vec![Command::Search {
            path: PathBuf::from("/x/a.jpg"),
            item: None
        }]
    );
    assert!(app.search.input.is_none());

    // The help overlay and the quit question take the keyboard.
    app.update(Action::ToggleHelp);
    assert!(map(&app, KeyCode::Char('t')).is_none());
    assert!(matches!(map(&app, KeyCode::Esc), Some(Action::ToggleHelp)));
    app.update(Action::ToggleHelp);
    app.update(Action::Worker(WorkerEvent::Trainer {
        pid: Some(7),
        control: ControlRequest::Run,
    }));
    app.update(Action::Quit);
    assert!(matches!(
        map(&app, KeyCode::Char('s')),
        Some(Action::ConfirmQuit {
            stop_training: true
        })
    ));
    assert!(matches!(
        map(&app, KeyCode::Char('l')),
        Some(Action::ConfirmQuit {
            stop_training: false
        })
    ));
    assert!(matches!(map(&app, KeyCode::Esc), Some(Action::Back)));
    app.update(Action::ConfirmQuit {
        stop_training: false,
    });
    assert!(app.should_quit && !app.stop_on_quit);
}

#[test]
fn keys_before_any_data_do_nothing_harmful() {
    let mut app = App::new(options(true));
    let codes = [
        KeyCode::Char('1'),
        KeyCode::Char('3'),
        KeyCode::Char('j'),
        KeyCode::Char('k'),
        KeyCode::Char('f'),
        KeyCode::Char('o'),
        KeyCode::End,
        KeyCode::Char('4'),
        KeyCode::Enter,
        KeyCode::Down,
        KeyCode::Right,
        KeyCode::Esc,
        KeyCode::Char('p'),
        KeyCode::Char('s'),
        KeyCode::Tab,
        KeyCode::BackTab,
        KeyCode::Char('h'),
        KeyCode::Char('5'),
        KeyCode::Char(' '),
        KeyCode::Char('d'),
        KeyCode::Down,
        KeyCode::Esc,
    ];
    for code in codes {
        if let Some(a) = map_key(&app, key(code)) {
            let commands = app.update(a);
            // Opening the Runs tab lists the runs folder (cheap, in the background).
            assert!(
                commands.iter().all(|c| matches!(c, Command::WatchRuns(_))),
                "{code:?} asked for {commands:?} with nothing loaded"
            );
        }
        for (w, h) in [(80, 24), (120, 40)] {
            render(&app, w, h);
        }
    }
    assert!(!app.should_quit);
}

#[test]
fn control_keys_ask_the_trainer() {
    let mut app = App::new(options(false));
    assert_eq!(
        app.update(Action::StartTraining),
        vec![Command::StartTraining]
    );
    assert_eq!(
        app.update(Action::StartTraining),
        vec![],
        "already starting"
    );
    app.update(Action::Worker(WorkerEvent::Spawned(Ok(99))));
    assert_eq!(
        app.update(Action::TogglePause),
        vec![Command::Control(ControlRequest::Pause)]
    );
    assert_eq!(
        app.update(Action::TogglePause),
        vec![Command::Control(ControlRequest::Run)]
    );
    assert_eq!(
        app.update(Action::StopTraining),
        vec![Command::Control(ControlRequest::Stop)]
    );
    assert_eq!(app.update(Action::BuildIndex), vec![Command::BuildIndex]);
    assert_eq!(app.update(Action::BuildIndex), vec![], "already building");
    // Read-only (watch): nothing reaches the trainer.
    let mut o = options(false);
    o.read_only = true;
    let mut watch = App::new(o);
    watch.update(Action::Worker(WorkerEvent::Trainer {
        pid: Some(5),
        control: ControlRequest::Run,
    }));
    for a in [
        Action::StartTraining,
        Action::TogglePause,
        Action::StopTraining,
        Action::BuildIndex,
    ] {
        assert!(watch.update(a).is_empty());
    }
    watch.update(Action::Quit);
    assert!(watch.should_quit, "watch quits without asking");
}

#[test]
fn demo_builds_the_index_when_its_training_ends() {
    let mut o = options(false);
    o.auto_index = true;
    let mut app = App::new(o);
    // A finished run replayed from the file does not trigger a build.
    assert!(
        app.update(Action::Worker(WorkerEvent::Train(fixture_events())))
            .is_empty()
    );
    app.update(Action::StartTraining);
    app.update(Action::Worker(WorkerEvent::Spawned(Ok(12))));
    let done = fixture_events()
        .into_iter()
        .filter(TrainEvent::is_terminal)
        .collect::<Vec<_>>();
    assert_eq!(
        app.update(Action::Worker(WorkerEvent::Train(done))),
        vec![Command::BuildIndex]
    );
}

/// Replays the recorded file line by line (as `vitrine watch` does) and checks the
/// Train view's numbers against the events.
#[test]
fn replay_of_recorded_metrics_drives_the_train_view() {
    let events = fixture_events();
    let mut follower = MetricsFollower::new(Path::new(METRICS));
    let replayed = follower.poll().expect("poll");
    assert_eq!(replayed, events);
    assert!(follower.poll().expect("poll").is_empty(), "nothing new");

    let mut state = TrainState::default();
    state.apply_all(&replayed);
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, loss, .. } => Some((*step, *loss)),
            _ => None,
        })
        .collect();
    let epochs: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Epoch { epoch, val, .. } => Some((*epoch, val.val_top1, val.val_top20)),
            _ => None,
        })
        .collect();
    let TrainEvent::Started(RunStarted {
        total_steps,
        epochs: n_epochs,
        ..
    }) = &events[0]
    else {
        panic!("the file starts with `started`");
    };
    assert_eq!(state.loss.len(), steps.len());
    assert_eq!(state.last.map(|s| s.step), steps.last().map(|s| s.0));
    assert_eq!(state.last.map(|s| s.loss), steps.last().map(|s| s.1));
    assert_eq!(state.progress(), (*total_steps, *total_steps));
    assert_eq!(state.epoch(), (*n_epochs, *n_epochs));
    assert_eq!(state.phase(), Phase::Finished);
    assert!(state.baseline.is_some());
    assert_eq!(state.epochs.len(), epochs.len());
    for (row, (e, top1, top20)) in state.epochs.iter().zip(&epochs) {
        assert_eq!(row.epoch, Some(*e));
        assert_eq!((row.val.val_top1, row.val.val_top20), (*top1, *top20));
    }
    let best = epochs
        .iter()
        .max_by(|a, b| a.2.total_cmp(&b.2))
        .map(|b| b.0);
    assert_eq!(state.best().map(|b| b.0), best);
    assert!(state.eta_seconds().is_none(), "no ETA once finished");

    // The view shows those numbers.
    let mut app = App::new(options(false));
    app.update(Action::Worker(WorkerEvent::Train(replayed)));
    let text = screen_text(&render(&app, 160, 48));
    assert!(
        text.contains(&format!("epoch {n_epochs}/{n_epochs}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("step {total_steps}/{total_steps}")),
        "{text}"
    );
    for (_, top1, top20) in &epochs {
        assert!(text.contains(&format!("{:.1}%", top1 * 100.0)), "{text}");
        assert!(text.contains(&format!("{:.1}%", top20 * 100.0)), "{text}");
    }
    let last = steps.last().map_or(0.0, |s| s.1);
    assert!(text.contains(&format!("{last:.4}")), "{text}");
    assert!(text.contains("untrained"));
}

/// The ETA appears after the warm-up steps and comes from the events alone.
#[test]
fn eta_after_warm_up() {
    let events = fixture_events();
    let mut state = TrainState::default();
    let mut seen = 0;
    for e in &events {
        state.apply(e);
        if matches!(e, TrainEvent::Step { .. }) {
            seen += 1;
            if seen < 6 {
                assert!(state.eta_seconds().is_none(), "no ETA during warm-up");
            }
            if seen == 10 {
                let eta = state.eta_seconds().expect("ETA after warm-up");
                assert!(eta > 0.0);
                break;
            }
        }
    }
}

#[test]
fn readme_lists_every_key() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for (keys, place, what) in KEYS {
        let shown = keys
            .split_whitespace()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(" ");
        let row = format!("| {shown} | {place} | {what} |");
        assert!(readme.contains(&row), "README lacks the key row {row}");
    }
}

/// A collapse notice stays on the Train tab until the run recovers; a run stopped
/// mid-epoch shows its validation as a row of its own; a run that never validated
/// says so instead of reporting 0%.
#[test]
fn collapse_warning_partial_validation_and_no_validation() {
    use vitrine::train::events::{NoticeKind, StopReason};
    let mut events = fixture_events();
    let done = events.pop().expect("done");
    assert!(matches!(done, TrainEvent::Done { .. }));
    events.push(TrainEvent::Notice {
        step: 54,
        message: "the embeddings are collapsing: mean cosine 0.991".into(),
        kind: Some(NoticeKind::Collapse),
    });
    let mut app = App::new(options(false));
    app.update(Action::Worker(WorkerEvent::Train(events.clone())));
    let t = render(&app, 160, 48);
    let text = screen_text(&t);
    assert!(text.contains("⚠ the embeddings are collapsing"), "{text}");
    assert!(has_colour(&t, Theme::default().error));
    insta::assert_snapshot!("train_collapse_160x48", t.backend());

    events.push(TrainEvent::Notice {
        step: 60,
        message: "the embeddings spread again".into(),
        kind: Some(NoticeKind::CollapseCleared),
    });
    events.push(TrainEvent::Validated {
        step: 61,
        epoch: 3,
        val: ValMetrics {
            val_loss: 0.41,
            val_top1: 0.2,
            val_top20: 0.987,
            val_map_at_r: 0.2,
        },
        seconds: 1.0,
    });
    events.push(TrainEvent::Done {
        step: 61,
        epoch: 3,
        reason: StopReason::TimeLimit,
        best_val_top20: 0.987,
        seconds: 40.0,
    });
    let mut app = App::new(options(false));
    app.update(Action::Worker(WorkerEvent::Train(events)));
    let text = screen_text(&render(&app, 160, 48));
    assert!(!text.contains('⚠'), "{text}");
    assert!(text.contains("step 61 *"), "{text}");
    assert!(text.contains("98.7%"), "{text}");
    assert!(text.contains("time limit reached after"), "{text}");

    // Started, a few steps, done: no validation ran.
    let started = fixture_events().into_iter().next().expect("started");
    let mut app = App::new(options(false));
    app.update(Action::Worker(WorkerEvent::Train(vec![
        started,
        // An epoch of a dataset without a val split: its val figures are none.
        TrainEvent::Epoch {
            epoch: 0,
            step: 3,
            train_loss: 0.5,
            val: ValMetrics::NONE,
            seconds: 3.0,
        },
        TrainEvent::Done {
            step: 3,
            epoch: 0,
            reason: StopReason::MaxSteps,
            best_val_top20: f64::NAN,
            seconds: 3.0,
        },
    ])));
    let text = screen_text(&render(&app, 160, 48));
    assert!(text.contains("no validation ran"), "{text}");
    assert!(!text.contains("best val top-20 0.0%"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("│epoch 1 "))
        .expect("epoch row");
    assert!(
        row.contains('—') && !row.contains("NaN") && !row.contains('*'),
        "{text}"
    );
}

#[test]
fn a_category_list_longer_than_its_panel_says_how_much_it_shows() {
    let mut app = App::new(options(false));
    let mut info = dataset();
    info.summary.categories = (0..98)
        .map(|i| CategorySummary {
            big: "TOPS".into(),
            small: format!("Small_{i:02}"),
            items: 100 - i,
            per_split: counts(1, 1, 1),
        })
        .collect();
    app.update(Action::Worker(WorkerEvent::Dataset(Box::new(Ok(info)))));
    app.update(Action::GoTab(Tab::Dataset));
    let text = screen_text(&render(&app, 80, 24));
    assert!(text.contains("of 98 shown)"), "{text}");
    // The largest stay in view.
    assert!(
        text.contains("Small_00") && !text.contains("Small_97"),
        "{text}"
    );
}

fn run_summary(name: &str, status: RunStatus, loss: &str, step: usize) -> RunSummary {
    RunSummary {
        name: name.into(),
        path: PathBuf::from(format!("runs/{name}")),
        status,
        pid: (status == RunStatus::Training).then_some(4242),
        backbone: "resnet18".into(),
        image_size: if loss == "triplet" { 64 } else { 96 },
        loss: loss.into(),
        mining: "batch_hard".into(),
        step,
        total_steps: 600,
        best_val_top1: Some(0.05 + step as f64 / 4000.0),
        best_val_top20: Some(0.30 + step as f64 / 2000.0),
        seconds: step as f64 * 1.7,
        updated: Some(1_700_000_000.0 - step as f64),
        message: None,
        path_not_utf8: false,
    }
}

fn run_curves(scale: f64, steps: usize, epochs: usize) -> RunCurves {
    RunCurves {
        loss: (1..=steps)
            .map(|s| {
                let x = s as f64;
                (x, scale * (0.3 + 0.7 * (-x / 150.0).exp()))
            })
            .collect(),
        val_top20: (0..epochs)
            .map(|e| (e as f64, 0.3 + 0.1 * e as f64 * scale.min(1.0)))
            .collect(),
    }
}

/// Two recorded runs (a finished one and a live one) as the runs worker reports them.
fn runs_listing() -> RunsListing {
    RunsListing {
        runs: vec![
            RunEntry {
                summary: run_summary("demo", RunStatus::Finished, "norm_softmax", 600),
                curves: run_curves(1.0, 600, 4),
            },
            RunEntry {
                summary: run_summary("hard-64", RunStatus::Training, "triplet", 420),
                curves: run_curves(0.6, 420, 3),
            },
        ],
        listed_at: 1_700_000_030.0,
    }
}

fn runs_app() -> (App, Vec<Command>) {
    let mut app = app_with_data(false);
    let commands = app.update(Action::GoTab(Tab::Runs));
    app.update(Action::Worker(WorkerEvent::Runs(Ok(runs_listing()))));
    (app, commands)
}

#[test]
fn snapshot_runs_tab() {
    let (mut app, commands) = runs_app();
    assert_eq!(commands, [Command::WatchRuns(PathBuf::from("runs"))]);
    // Both runs marked: their loss curves overlaid, one colour each.
    app.update(Action::ToggleMark);
    app.update(Action::Down);
    app.update(Action::ToggleMark);
    for (w, h) in SIZES {
        let t = render(&app, w, h);
        let text = screen_text(&t);
        assert!(
            text.contains("hard-64") && text.contains("training"),
            "{text}"
        );
        insta::assert_snapshot!(format!("runs_{w}x{h}"), t.backend());
    }
}

#[test]
fn snapshot_runs_diff_popup() {
    let (mut app, _) = runs_app();
    app.update(Action::ToggleMark);
    app.update(Action::Down);
    app.update(Action::ToggleMark);
    let c = app.update(Action::Diff);
    assert_eq!(
        c,
        [Command::DiffRuns {
            a: PathBuf::from("runs/demo"),
            b: PathBuf::from("runs/hard-64"),
        }]
    );
    let t = render(&app, 80, 24);
    assert!(screen_text(&t).contains("reading the two configs"));
    let a = Config::default();
    let mut b = a.clone();
    b.model.image_size = 96;
    b.train.lr = 0.0005;
    // An answer for another pair is not this popup's.
    app.update(Action::Worker(WorkerEvent::RunsDiff {
        a: PathBuf::from("runs/hard-64"),
        b: PathBuf::from("runs/demo"),
        rows: Err("stale".into()),
    }));
    assert!(app.runs.diff.as_ref().is_some_and(|d| d.rows.is_none()));
    app.update(Action::Worker(WorkerEvent::RunsDiff {
        a: PathBuf::from("runs/demo"),
        b: PathBuf::from("runs/hard-64"),
        rows: Ok(diff(&a, &b)),
    }));
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("runs_diff_{w}x{h}"), render(&app, w, h).backend());
    }
    app.update(Action::Back);
    assert!(app.runs.diff.is_none());
}

#[test]
fn runs_keys_mark_select_and_diff() {
    let (mut app, _) = runs_app();
    let map = |app: &App, code| map_key(app, key(code));
    assert!(matches!(
        map(&App::new(options(false)), KeyCode::Char('5')),
        Some(Action::GoTab(Tab::Runs))
    ));
    assert!(matches!(
        map(&app, KeyCode::Char(' ')),
        Some(Action::ToggleMark)
    ));
    assert!(matches!(map(&app, KeyCode::Char('d')), Some(Action::Diff)));
    assert!(matches!(map(&app, KeyCode::Down), Some(Action::Down)));
    assert!(matches!(map(&app, KeyCode::Enter), Some(Action::Enter)));
    // Elsewhere space and d do nothing.
    let other = App::new(options(false));
    assert!(map(&other, KeyCode::Char(' ')).is_none());
    assert!(map(&other, KeyCode::Char('d')).is_none());

    // One run only: d explains instead of asking the worker.
    assert!(app.update(Action::Diff).is_empty());
    assert!(app.runs.diff.is_none());
    assert!(app.status.as_deref().is_some_and(|s| s.contains("mark")));
    // Space marks and unmarks the selected run.
    app.update(Action::ToggleMark);
    assert_eq!(app.runs.marked, [PathBuf::from("runs/demo")]);
    app.update(Action::ToggleMark);
    assert!(app.runs.marked.is_empty());
    // The first marked run against the selected one.
    app.update(Action::ToggleMark);
    app.update(Action::Down);
    assert_eq!(app.runs.selected, 1);
    assert_eq!(
        app.update(Action::Diff),
        [Command::DiffRuns {
            a: PathBuf::from("runs/demo"),
            b: PathBuf::from("runs/hard-64"),
        }]
    );
    // A new listing keeps the selection on the same run and the marks.
    let mut listing = runs_listing();
    listing.runs.reverse();
    app.update(Action::Worker(WorkerEvent::Runs(Ok(listing))));
    assert_eq!(app.runs.selected, 0);
    assert_eq!(app.runs.charted().len(), 1);
    // Leaving and reopening the tab asks for a fresh listing.
    app.update(Action::GoTab(Tab::Train));
    assert_eq!(
        app.update(Action::GoTab(Tab::Runs)),
        [Command::WatchRuns(PathBuf::from("runs"))]
    );
    assert!(app.update(Action::Down).is_empty());
}

/// Another recorded run, still training: the fixture's events up to step `steps`,
/// under another name.
fn second_run_events(name: &str, steps: usize) -> Vec<TrainEvent> {
    fixture_events()
        .into_iter()
        .take_while(|e| !matches!(e, TrainEvent::Step { step, .. } if *step > steps))
        .map(|mut e| {
            match &mut e {
                TrainEvent::Started(RunStarted { run, .. }) => *run = name.into(),
                TrainEvent::Checkpoint { path, .. } => {
                    *path = path.replace("runs/demo/", &format!("runs/{name}/"));
                }
                _ => {}
            }
            e
        })
        .collect()
}

fn of_run(generation: u64, event: WorkerEvent) -> Action {
    Action::Worker(WorkerEvent::OfRun {
        generation,
        event: Box::new(event),
    })
}

#[test]
fn enter_on_the_runs_tab_opens_the_run_in_the_other_tabs() {
    let (mut app, _) = runs_app();
    assert!(app.train.loss.len() > 20, "the first run's history");
    app.update(Action::ToggleMark);
    app.update(Action::Down);
    let commands = app.update(Action::Enter);
    assert_eq!(
        commands,
        [Command::OpenRun {
            run: PathBuf::from("runs/hard-64"),
            generation: 1,
        }]
    );
    // Everything of the old run starts afresh; the Runs tab keeps its table and marks.
    assert_eq!(app.tab, Tab::Train);
    assert_eq!(app.opts.run, PathBuf::from("runs/hard-64"));
    assert_eq!(app.generation, 1);
    assert_eq!(app.train, TrainState::default());
    assert_eq!(app.trainer.pid, None);
    assert!(matches!(app.dataset, Loadable::Loading));
    assert!(app.triplets.rows.is_empty() && app.search.queries.is_empty());
    assert_eq!(app.index, IndexStatus::Unknown);
    assert_eq!(app.runs.runs.len(), 2);
    assert_eq!(app.runs.selected, 1);
    assert_eq!(app.runs.marked, [PathBuf::from("runs/demo")]);

    // Late events of the old run's workers land nowhere.
    app.update(of_run(0, WorkerEvent::Train(fixture_events())));
    app.update(of_run(0, WorkerEvent::Dataset(Box::new(Ok(dataset())))));
    app.update(of_run(
        0,
        WorkerEvent::Index(IndexStatus::Ready { count: 146 }),
    ));
    app.update(of_run(
        0,
        WorkerEvent::Trainer {
            pid: Some(4242),
            control: ControlRequest::Run,
        },
    ));
    assert_eq!(app.train, TrainState::default());
    assert!(matches!(app.dataset, Loadable::Loading));
    assert_eq!(app.index, IndexStatus::Unknown);
    assert_eq!(app.trainer.pid, None);

    // The new run's: its dataset, its history.
    app.update(of_run(
        1,
        WorkerEvent::RunOpened {
            data: PathBuf::from("data/hard"),
            note: None,
        },
    ));
    assert_eq!(app.opts.data, PathBuf::from("data/hard"));
    let events = second_run_events("hard-64", 30);
    app.update(of_run(1, WorkerEvent::Train(events.clone())));
    assert_eq!(app.train.events, events.len());
    assert_eq!(app.train.loss.len(), 30);
    assert_eq!(
        app.train.info.as_ref().map(|i| i.run.as_str()),
        Some("hard-64")
    );
    assert_eq!(app.train.last.map(|s| s.step), Some(30));
    for (w, h) in SIZES {
        let t = render(&app, w, h);
        assert!(screen_text(&t).contains("hard-64"), "{}", screen_text(&t));
        insta::assert_snapshot!(format!("opened_run_{w}x{h}"), t.backend());
    }
    // Its data folder is missing: the Dataset tab says so where the dataset would be.
    app.update(of_run(
        1,
        WorkerEvent::Dataset(Box::new(Err(
            "data/hard: no Eval/list_eval_partition.txt".into()
        ))),
    ));
    app.update(Action::GoTab(Tab::Dataset));
    let text = screen_text(&render(&app, 80, 24));
    assert!(text.contains("data/hard: no Eval"), "{text}");

    // `t` acts on the opened run, with the usual check of its lock.
    app.update(of_run(
        1,
        WorkerEvent::Trainer {
            pid: Some(77),
            control: ControlRequest::Run,
        },
    ));
    assert!(app.update(Action::StartTraining).is_empty());
    assert!(app.status.as_deref().is_some_and(|s| s.contains("pid 77")));

    // Opening the shown run again changes nothing but the tab.
    app.update(Action::GoTab(Tab::Runs));
    assert!(app.update(Action::Enter).is_empty());
    assert_eq!((app.tab, app.generation), (Tab::Train, 1));
    assert_eq!(app.train.events, events.len());
    // Opening the first run again: generation 2, the hard-64 events are stale now.
    app.update(Action::GoTab(Tab::Runs));
    app.update(Action::Up);
    assert_eq!(
        app.update(Action::Enter),
        [Command::OpenRun {
            run: PathBuf::from("runs/demo"),
            generation: 2,
        }]
    );
    app.update(of_run(1, WorkerEvent::Train(events)));
    assert_eq!(app.train.events, 0);
}

#[test]
fn a_read_only_dashboard_opens_runs_read_only() {
    let mut o = options(false);
    o.read_only = true;
    let mut app = App::new(o);
    app.update(Action::GoTab(Tab::Runs));
    app.update(Action::Worker(WorkerEvent::Runs(Ok(runs_listing()))));
    app.update(Action::Down);
    assert_eq!(app.update(Action::Enter).len(), 1);
    assert!(app.opts.read_only);
    assert!(app.update(Action::StartTraining).is_empty());
    assert!(text_of_status(&app).contains("read-only"));
}

fn text_of_status(app: &App) -> String {
    app.status.clone().unwrap_or_default()
}

/// Ranks of the fixed failures list (worst first): two items without a gallery image,
/// then falling ranks, then queries whose item comes first.
const FAILURE_RANKS: [Option<usize>; 12] = [
    None,
    None,
    Some(97),
    Some(64),
    Some(41),
    Some(20),
    Some(12),
    Some(4),
    Some(2),
    Some(1),
    Some(1),
    Some(1),
];

fn gallery_hit(item: usize, rank: usize) -> GalleryHit {
    let img = image(item, "shop_01");
    GalleryHit {
        rank,
        path: img.path,
        item_id: img.item_id,
        category: format!("{}/{}", img.big, img.category),
        score: 0.9 - rank as f32 * 0.004,
    }
}

fn failures_report() -> FailuresReport {
    let queries = dataset().queries;
    let rows = FAILURE_RANKS
        .iter()
        .enumerate()
        .map(|(i, &rank)| {
            let query = queries[(i * 7) % queries.len()].clone();
            let item: usize = query.item_id[3..].parse().expect("item number");
            let ahead = rank.map_or(5, |r| (r - 1).min(5));
            FailureRow {
                query,
                rank,
                true_hit: rank.map(|r| GalleryHit {
                    path: image(item, "shop_01").path,
                    ..gallery_hit(item, r)
                }),
                ahead: (0..ahead)
                    .map(|k| gallery_hit(300 + i * 5 + k, k + 1))
                    .collect(),
            }
        })
        .collect();
    let categories = CATEGORIES
        .iter()
        .enumerate()
        .map(|(i, (big, small))| CategoryScore {
            category: format!("{big}/{small}"),
            queries: 3 + i,
            top1: 0.05 * i as f64,
            top20: 0.1 * i as f64,
        })
        .collect();
    FailuresReport {
        rows,
        categories,
        gallery: 146,
        unreadable: 0,
        seconds: 1.5,
    }
}

/// The app on the Search tab with the failures view open and its computation asked;
/// returns the request's token.
fn failures_app(images: bool) -> (App, u64) {
    let mut app = app_with_data(images);
    app.update(Action::GoTab(Tab::Search));
    assert!(matches!(
        map_key(&app, key(KeyCode::Char('f'))),
        Some(Action::ToggleFailures)
    ));
    let commands = app.update(Action::ToggleFailures);
    let [Command::ComputeFailures { token }] = commands[..] else {
        panic!("opening the view asks for the failures once: {commands:?}");
    };
    (app, token)
}

#[test]
fn snapshot_failures_view() {
    let (mut app, token) = failures_app(false);
    assert!(
        app.update(Action::Resize).is_empty(),
        "asked only once while computing"
    );
    app.update(Action::Worker(WorkerEvent::Failures {
        token,
        update: FailuresUpdate::Progress {
            done: 12,
            total: 30,
        },
    }));
    let t = render(&app, 80, 24);
    let text = screen_text(&t);
    assert!(
        text.contains("computing failures…") && text.contains("12/30 queries"),
        "{text}"
    );
    insta::assert_snapshot!("failures_computing_80x24", t.backend());
    app.update(Action::Worker(WorkerEvent::Failures {
        token,
        update: FailuresUpdate::Done(Ok(failures_report())),
    }));
    // An answer to an older request is dropped.
    app.update(Action::Worker(WorkerEvent::Failures {
        token: token - 1,
        update: FailuresUpdate::Done(Err("stale".into())),
    }));
    assert!(app.search.failures.report().is_some());
    app.update(Action::Down);
    app.update(Action::Down);
    let row = app.search.failures.selected_row().expect("row").clone();
    assert_eq!(row.rank, Some(97));
    for (w, h) in SIZES {
        let t = render(&app, w, h);
        let text = screen_text(&t);
        assert!(
            text.contains("Rank 97: not in the top 20") && text.contains(&row.query.item_id),
            "{text}"
        );
        insta::assert_snapshot!(format!("failures_{w}x{h}"), t.backend());
    }
    // The per-category table, worst top-20 first.
    assert!(matches!(
        map_key(&app, key(KeyCode::Char('c'))),
        Some(Action::ToggleCategories)
    ));
    app.update(Action::ToggleCategories);
    for (w, h) in SIZES {
        let t = render(&app, w, h);
        assert!(screen_text(&t).contains("first (10)"));
        insta::assert_snapshot!(format!("failures_categories_{w}x{h}"), t.backend());
    }
    // A long table says which part it shows, and scrolls.
    let mut long = failures_report();
    long.categories = (0..40)
        .map(|i| CategoryScore {
            category: format!("BIG/Small_{i:02}"),
            queries: 2,
            top1: 0.0,
            top20: f64::from(i) / 40.0,
        })
        .collect();
    let mut scrolled = app_with_data(false);
    scrolled.update(Action::GoTab(Tab::Search));
    let t = scrolled.update(Action::ToggleFailures);
    let [Command::ComputeFailures { token: t }] = t[..] else {
        panic!("{t:?}")
    };
    scrolled.update(Action::Worker(WorkerEvent::Failures {
        token: t,
        update: FailuresUpdate::Done(Ok(long)),
    }));
    scrolled.update(Action::ToggleCategories);
    let text = screen_text(&render(&scrolled, 80, 24));
    assert!(text.contains("worst first · 1–18 of 40"), "{text}");
    scrolled.update(Action::End);
    let text = screen_text(&render(&scrolled, 80, 24));
    assert!(
        text.contains("23–40 of 40")
            && text.contains("BIG/Small_39")
            && !text.contains("BIG/Small_21"),
        "{text}"
    );
    // Esc closes the table, then Enter searches the selected query as usual.
    app.update(Action::Back);
    assert!(app.search.failures.open && !app.search.failures.categories);
    let commands = app.update(Action::Enter);
    assert_eq!(
        commands,
        vec![Command::Search {
            path: row.query.path.clone(),
            item: Some(row.query.item_id.clone()),
        }]
    );
    assert!(!app.search.failures.open);
    assert_eq!(app.search.queries[app.search.selected].path, row.query.path);
    // `f` again: the same report, not asked again; Esc goes back.
    assert!(app.update(Action::ToggleFailures).is_empty());
    assert!(app.search.failures.open);
    app.update(Action::Back);
    assert!(!app.search.failures.open);
    // A rebuilt index makes the report stale: asked again when the view opens.
    app.update(Action::Worker(WorkerEvent::Index(IndexStatus::Building {
        done: 1,
        total: 2,
    })));
    app.update(Action::Worker(WorkerEvent::Index(IndexStatus::Ready {
        count: 150,
    })));
    assert!(app.search.failures.report().is_none());
    let commands = app.update(Action::ToggleFailures);
    assert!(
        matches!(commands[..], [Command::ComputeFailures { token: t }] if t > token),
        "{commands:?}"
    );
}

#[test]
fn failures_view_asks_for_the_query_its_item_and_the_five_ahead() {
    let (mut app, token) = failures_app(true);
    app.update(Action::Worker(WorkerEvent::Failures {
        token,
        update: FailuresUpdate::Done(Ok(failures_report())),
    }));
    for _ in 0..3 {
        app.update(Action::Down);
    }
    let row = app.search.failures.selected_row().expect("row").clone();
    let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
    let mut wanted = Vec::new();
    t.draw(|f| wanted = views::draw(f, &app, &Theme::default()))
        .expect("draw");
    let paths: Vec<PathBuf> = wanted.iter().map(|k| k.path.clone()).collect();
    let mut expected = vec![row.query.path.clone()];
    expected.extend(row.true_hit.iter().map(|h| h.path.clone()));
    expected.extend(row.ahead.iter().map(|h| h.path.clone()));
    assert_eq!(expected.len(), 7);
    assert_eq!(paths, expected);
    assert_eq!(app.update(Action::NeedThumbs(wanted)).len(), 7);
}

#[test]
fn snapshot_search_while_the_model_loads() {
    let mut app = app_with_data(false);
    app.update(Action::GoTab(Tab::Search));
    app.update(Action::Worker(WorkerEvent::Model(ModelLoad::Loading)));
    assert!(screen_text(&render(&app, 80, 24)).contains("loading model and index…"));
    // A search asked now goes to the worker, which runs it after the load.
    let commands = app.update(Action::Enter);
    assert!(matches!(commands[..], [Command::Search { .. }]));
    assert!(app.search.waiting_for_model());
    let t = render(&app, 80, 24);
    assert!(screen_text(&t).contains("loading model and index… · the search waits for it"));
    insta::assert_snapshot!("search_loading_80x24", t.backend());
    app.update(Action::Worker(WorkerEvent::Model(ModelLoad::Ready {
        seconds: 0.9,
        beam: "ef 34 measured for recall@20 0.99 (0.9912)".into(),
    })));
    assert!(!app.search.waiting_for_model());
    let text = screen_text(&render(&app, 160, 48));
    assert!(
        text.contains("ready (loaded in 0.9 s) · ef 34 measured for recall@20 0.99 (0.9912)"),
        "{text}"
    );
}
