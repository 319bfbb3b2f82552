//! `vitrine search --show` in a real pseudo-terminal (util-linux `script`) whose other
//! end is a small fake terminal here: it answers the graphics queries as xterm
//! `-ti vt340` (sixel) or kitty do, and everything the command prints is checked for
//! pictures, for replies echoed as text, and for the terminal's mode afterwards.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vitrine");
/// xterm's answer to device attributes with `-ti vt340` (4 = sixel), from the issue.
const XTERM_VT340_DA1: &[u8] = b"\x1b[?63;1;2;4;6;9;15;16;22;28c";

/// What the fake terminal is.
#[derive(Clone, Copy)]
enum Term {
    /// Answers device attributes (sixel), cell size and status; ignores kitty queries.
    XtermVt340,
    /// Answers kitty graphics queries (a remote kitty: no shared temp files).
    Kitty,
    /// Answers nothing at all.
    Silent,
}

impl Term {
    /// The reply to the query at the start of `rest` and the query's length;
    /// `Some((0, _))` when `rest` is the start of a query cut short by a read.
    fn reply(self, rest: &[u8]) -> Option<(usize, &'static [u8])> {
        let xterm: &[(&[u8], &[u8])] = &[
            (b"\x1b[c", XTERM_VT340_DA1),
            (b"\x1b[16t", b"\x1b[6;20;10t"),
            (b"\x1b[5n", b"\x1b[0n"),
            (b"\x1b[6n", b"\x1b[1;1R"),
        ];
        let kitty: &[(&[u8], &[u8])] = &[
            (b"\x1b_Gi=31,s=1,v=1,a=q,t=d,", b"\x1b_Gi=31;OK\x1b\\"),
            (
                b"\x1b_Gi=31,s=1,v=1,a=q,t=t;",
                b"\x1b_Gi=31;ENOENT:remote\x1b\\",
            ),
            (b"\x1b[c", b"\x1b[?62;c"),
            (b"\x1b[16t", b"\x1b[6;20;10t"),
            (b"\x1b[5n", b"\x1b[0n"),
            (b"\x1b[6n", b"\x1b[1;1R"),
        ];
        let table = match self {
            Term::XtermVt340 => xterm,
            Term::Kitty => kitty,
            Term::Silent => return None,
        };
        if let Some((q, r)) = table.iter().find(|(q, _)| rest.starts_with(q)) {
            return Some((q.len(), r));
        }
        table
            .iter()
            .any(|(q, _)| q.starts_with(rest))
            .then_some((0, b""))
    }
}

/// Runs `shell` in a new pseudo-terminal of 100 × 40 cells driven by `term`; returns
/// everything written to the terminal, or `None` when `script` is missing.
fn in_terminal(shell: &str, term: Term, timeout: Duration) -> Option<Vec<u8>> {
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipping: util-linux `script` is not installed");
        return None;
    }
    let line = format!("stty cols 100 rows 40 echo icanon; {shell}");
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-f", "-c", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The picture protocol must come from the answers alone, not from hints of the
    // terminal running the tests.
    for var in [
        "TMUX",
        "TERM_PROGRAM",
        "LC_TERMINAL",
        "ITERM_SESSION_ID",
        "KITTY_WINDOW_ID",
        "WEZTERM_EXECUTABLE",
        "KONSOLE_VERSION",
        "COLUMNS",
        "LINES",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("spawn script");
    let mut input = child.stdin.take().expect("stdin");
    let mut output = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut scanned = 0;
        let mut chunk = [0u8; 8192];
        loop {
            let n = match output.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.extend_from_slice(&chunk[..n]);
            while scanned < seen.len() {
                match (seen[scanned] == 0x1b)
                    .then(|| term.reply(&seen[scanned..]))
                    .flatten()
                {
                    // The start of a query: look again with more.
                    Some((0, _)) => break,
                    Some((len, reply)) => {
                        let _ = input.write_all(reply);
                        let _ = input.flush();
                        scanned += len;
                    }
                    None => scanned += 1,
                }
            }
        }
        drop(input);
        seen
    });
    let end = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let seen = reader.join().expect("reader");
            panic!(
                "still running after {timeout:?}; the terminal shows:\n{}",
                String::from_utf8_lossy(&seen)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(reader.join().expect("reader"))
}

/// A synthetic set, a run trained for one step and its index (made once).
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    query: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::write(
            dir.join("tiny.toml"),
            "[model]\nimage_size = 32\ndropout = 0.0\n[train]\nbatch = 8\ndevice = \"cpu\"\n\
             checkpoint_every = 0\n",
        )
        .expect("config");
        let vitrine = |args: &[&str]| {
            let out = Command::new(BIN)
                .current_dir(&dir)
                .args(args)
                .output()
                .expect("run vitrine");
            assert!(
                out.status.success(),
                "vitrine {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        vitrine(&["synth", "--out", "ds", "--items", "80", "--size", "48"]);
        let c = ["--config", "tiny.toml"];
        vitrine(
            &[
                &c[..],
                &["train", "--data", "ds", "--run", "run", "--max-steps", "1"],
            ]
            .concat(),
        );
        vitrine(
            &[
                &c[..],
                &[
                    "index",
                    "--run",
                    "run",
                    "--data",
                    "ds",
                    "--checkpoint",
                    "last",
                ],
            ]
            .concat(),
        );
        let partition =
            std::fs::read_to_string(dir.join("ds/Eval/list_eval_partition.txt")).expect("pairs");
        let query = partition
            .lines()
            .skip(2)
            .find(|l| l.ends_with(" test"))
            .and_then(|l| l.split_whitespace().next())
            .map(|p| format!("ds/{p}"))
            .expect("a test pair");
        Fixture {
            _tmp: tmp,
            dir,
            query,
        }
    })
}

/// The `--show` command line, run in the fixture's folder.
fn show_command(f: &Fixture, extra: &str) -> String {
    format!(
        "cd '{}' && '{BIN}' search --run run '{}' --show {extra}",
        f.dir.display(),
        f.query
    )
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Sixel pictures: a DCS (`ESC P`) whose parameters end in `q`.
fn sixels(out: &[u8]) -> usize {
    out.windows(2)
        .enumerate()
        .filter(|(i, w)| {
            *w == b"\x1bP"
                && out[i + 2..]
                    .iter()
                    .take(16)
                    .position(|&b| b == b'q')
                    .is_some_and(|q| {
                        out[i + 2..i + 2 + q]
                            .iter()
                            .all(|b| b.is_ascii_digit() || *b == b';')
                    })
        })
        .count()
}

/// "N nearest of M gallery images" → (N, M).
fn nearest(text: &str) -> (usize, usize) {
    let line = text
        .lines()
        .find(|l| l.contains(" nearest of "))
        .unwrap_or_else(|| panic!("no result line in:\n{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = words[0].trim_start_matches(|c: char| !c.is_ascii_digit());
    (n.parse().expect("N"), words[3].parse().expect("M"))
}

/// The terminal after the command: line editing and echo back on.
fn assert_cooked(text: &str) {
    let stty = text
        .lines()
        .skip_while(|l| !l.contains("EXIT="))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(stty.contains(" icanon"), "no stty output:\n{stty}");
    assert!(
        !stty.contains("-icanon") && !stty.contains("-echo "),
        "terminal left in raw mode:\n{stty}"
    );
}

#[test]
fn show_in_a_sixel_xterm_prints_sixels_and_swallows_the_replies() {
    let f = fixture();
    let shell = format!("{}; echo EXIT=$?; stty -a", show_command(f, ""));
    let Some(out) = in_terminal(&shell, Term::XtermVt340, Duration::from_secs(120)) else {
        return;
    };
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("EXIT=0"), "{text}");
    // The terminal was asked (device attributes) ...
    assert!(
        count(&out, b"\x1b[c") >= 1,
        "never asked the terminal:\n{text}"
    );
    // ... and its answer was read, not echoed onto the screen (`^[[?63;1;…c`).
    assert!(!text.contains("?63;"), "a reply leaked:\n{text}");
    let (n, gallery) = nearest(&text);
    assert!(n >= 6, "{n} hits");
    // One sixel picture for the query and each hit, no half blocks.
    assert_eq!(sixels(&out), n + 1, "sixel pictures:\n{text}");
    assert!(!text.contains('▀'), "half blocks drawn:\n{text}");
    // 100 columns: 5 thumbnails a row, captions under them.
    // (Each caption line follows a carriage return after the pictures above it.)
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').rsplit('\r').next())
        .collect();
    let first_row = lines
        .iter()
        .find(|l| l.starts_with("#1 "))
        .unwrap_or_else(|| panic!("no caption row:\n{text}"));
    assert!(
        first_row.contains("#5 ") && !first_row.contains("#6 "),
        "{first_row}"
    );
    assert!(lines.iter().any(|l| l.starts_with("query")), "{text}");
    if n == gallery {
        // Every gallery image is listed, so the query's own item is too, marked.
        assert!(
            text.contains('✓'),
            "the query's item is not marked:\n{text}"
        );
    }
    assert_cooked(&text);
}

#[test]
fn show_in_kitty_uses_kitty_graphics_and_swallows_the_replies() {
    let f = fixture();
    let shell = format!("{}; echo EXIT=$?; stty -a", show_command(f, "--k 5"));
    let Some(out) = in_terminal(&shell, Term::Kitty, Duration::from_secs(120)) else {
        return;
    };
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("EXIT=0"), "{text}");
    assert!(
        !text.contains("?62;") && !text.contains(";OK"),
        "a reply leaked:\n{text}"
    );
    // Pictures transmitted and shown (a=T), one per row of thumbnails: the query's
    // and one row of 5.
    assert_eq!(count(&out, b",a=T"), 2, "kitty pictures:\n{text}");
    assert_eq!(sixels(&out), 0);
    assert!(!text.contains('▀'), "half blocks drawn:\n{text}");
    assert_cooked(&text);
}

#[test]
fn show_in_a_silent_terminal_falls_back_to_half_blocks_and_restores_it() {
    let f = fixture();
    let shell = format!("{}; echo EXIT=$?; stty -a", show_command(f, "--k 3"));
    let Some(out) = in_terminal(&shell, Term::Silent, Duration::from_secs(120)) else {
        return;
    };
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("EXIT=0"), "{text}");
    assert!(text.contains('▀'), "no half blocks:\n{text}");
    assert_eq!(sixels(&out), 0);
    assert_cooked(&text);
}

#[test]
fn show_piped_asks_the_terminal_nothing() {
    let f = fixture();
    let shell = format!("{} > shown.out; echo EXIT=$?; stty -a", show_command(f, ""));
    let Some(out) = in_terminal(&shell, Term::XtermVt340, Duration::from_secs(120)) else {
        return;
    };
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("EXIT=0"), "{text}");
    assert!(
        text.contains("not a terminal"),
        "no note on stderr:\n{text}"
    );
    let piped = std::fs::read(f.dir.join("shown.out")).expect("piped output");
    let piped_text = String::from_utf8_lossy(&piped);
    assert!(
        !piped.contains(&0x1b),
        "escape sequences in the pipe:\n{piped_text}"
    );
    nearest(&piped_text);
    // Nothing reached the terminal either (no query, no picture).
    assert_eq!(count(&out, b"\x1b[c") + count(&out, b"\x1b_G"), 0, "{text}");
    assert_cooked(&text);
}

#[test]
fn show_without_a_terminal_at_all_exits_at_once() {
    let f = fixture();
    let started = Instant::now();
    let out = Command::new(BIN)
        .current_dir(&f.dir)
        .args(["search", "--run", "run", &f.query, "--show"])
        .stdin(Stdio::null())
        .output()
        .expect("run vitrine");
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.contains(&0x1b), "escape sequences in stdout");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a terminal"));
    assert!(secs < 30.0, "took {secs:.1} s");
}
