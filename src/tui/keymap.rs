//! Keys → [`Action`]s. The mapping depends only on what has the keyboard (the quit
//! question, the help overlay, the path input, the tab), never on data, so a key that
//! arrives before any data is harmless. [`KEYS`] is the one list the help overlay and
//! the README show.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{Action, App, Tab};

/// `(keys, where, what)` for every key; the help overlay lists exactly these.
pub const KEYS: [(&str, &str, &str); 21] = [
    (
        "1 2 3 4 5",
        "anywhere",
        "tabs Train, Dataset, Triplets, Search, Runs",
    ),
    ("Tab  Shift-Tab", "anywhere", "next / previous tab"),
    ("?", "anywhere", "this help (Esc or ? closes it)"),
    (
        "q  Ctrl-C",
        "anywhere",
        "quit (asks first while training runs)",
    ),
    (
        "t",
        "anywhere",
        "start training (resumes the last checkpoint)",
    ),
    ("p", "anywhere", "pause / continue training"),
    (
        "s",
        "anywhere",
        "stop training (it writes a checkpoint first)",
    ),
    ("i", "anywhere", "build the search index (best checkpoint)"),
    ("h", "Train", "loss chart: recent window / full history"),
    ("j k  ↓ ↑", "Triplets, Search", "move down / up"),
    (
        "PgDn PgUp g G",
        "Triplets, Search",
        "page down / up, first / last (Home, End)",
    ),
    ("f  F", "Triplets", "filter: next / previous small category"),
    ("o", "Triplets", "order: sampler's / hardest (largest loss)"),
    (
        "Enter  /",
        "Search",
        "search the selected query / type an image path",
    ),
    ("f  c", "Search", "worst queries first / per small category"),
    ("← → ↑ ↓", "Search results", "move in the result grid"),
    ("Enter", "Search results", "show the selected result large"),
    (
        "Esc",
        "Search",
        "close result or failures / back to the queries",
    ),
    (
        "j k  Enter",
        "Runs",
        "select (↓ ↑ too) / open it in the other tabs",
    ),
    (
        "Space  d  Esc",
        "Runs",
        "mark a run (charts) / config diff / close",
    ),
    (
        "s  l  Esc",
        "quit question",
        "stop training, quit / leave it running / stay",
    ),
];

/// The action for `key` in the app's current context, if any.
pub fn map_key(app: &App, key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(if app.quit_prompt {
            Action::ConfirmQuit {
                stop_training: false,
            }
        } else {
            Action::Quit
        });
    }
    if app.quit_prompt {
        return match key.code {
            KeyCode::Char('s' | 'S') => Some(Action::ConfirmQuit {
                stop_training: true,
            }),
            KeyCode::Char('l' | 'L') => Some(Action::ConfirmQuit {
                stop_training: false,
            }),
            KeyCode::Esc | KeyCode::Char('c' | 'n') => Some(Action::Back),
            _ => None,
        };
    }
    if app.help {
        return match key.code {
            KeyCode::Esc | KeyCode::Char('?') => Some(Action::ToggleHelp),
            KeyCode::Char('q') => Some(Action::Quit),
            _ => None,
        };
    }
    if app.typing() {
        return match key.code {
            KeyCode::Enter => Some(Action::Enter),
            KeyCode::Esc => Some(Action::Back),
            KeyCode::Backspace => Some(Action::InputBackspace),
            KeyCode::Char('u') if ctrl => Some(Action::InputClear),
            KeyCode::Char(c) if !ctrl => Some(Action::Input(c)),
            _ => None,
        };
    }
    let global = match key.code {
        KeyCode::Char('q') => Some(Action::Quit),
        KeyCode::Char('?') => Some(Action::ToggleHelp),
        KeyCode::Char('1') => Some(Action::GoTab(Tab::Train)),
        KeyCode::Char('2') => Some(Action::GoTab(Tab::Dataset)),
        KeyCode::Char('3') => Some(Action::GoTab(Tab::Triplets)),
        KeyCode::Char('4') => Some(Action::GoTab(Tab::Search)),
        KeyCode::Char('5') => Some(Action::GoTab(Tab::Runs)),
        KeyCode::Tab => Some(Action::NextTab),
        KeyCode::BackTab => Some(Action::PrevTab),
        KeyCode::Char('t') => Some(Action::StartTraining),
        KeyCode::Char('p') => Some(Action::TogglePause),
        KeyCode::Char('s') => Some(Action::StopTraining),
        KeyCode::Char('i') => Some(Action::BuildIndex),
        KeyCode::Esc => Some(Action::Back),
        _ => None,
    };
    if global.is_some() {
        return global;
    }
    let lists = matches!(app.tab, Tab::Triplets | Tab::Search | Tab::Runs);
    match (app.tab, key.code) {
        (Tab::Train, KeyCode::Char('h')) => Some(Action::ToggleHistory),
        (_, KeyCode::Char('j') | KeyCode::Down) if lists => Some(Action::Down),
        (_, KeyCode::Char('k') | KeyCode::Up) if lists => Some(Action::Up),
        (_, KeyCode::PageDown) if lists => Some(Action::PageDown),
        (_, KeyCode::PageUp) if lists => Some(Action::PageUp),
        (_, KeyCode::Char('g') | KeyCode::Home) if lists => Some(Action::Home),
        (_, KeyCode::Char('G') | KeyCode::End) if lists => Some(Action::End),
        (Tab::Triplets, KeyCode::Char('f')) => Some(Action::NextFilter),
        (Tab::Triplets, KeyCode::Char('F')) => Some(Action::PrevFilter),
        (Tab::Triplets, KeyCode::Char('o')) => Some(Action::ToggleHardest),
        (Tab::Runs, KeyCode::Char(' ')) => Some(Action::ToggleMark),
        (Tab::Runs, KeyCode::Char('d')) => Some(Action::Diff),
        (Tab::Search | Tab::Runs, KeyCode::Enter) => Some(Action::Enter),
        (Tab::Search, KeyCode::Char('/')) => Some(Action::StartInput),
        (Tab::Search, KeyCode::Char('f')) => Some(Action::ToggleFailures),
        (Tab::Search, KeyCode::Char('c')) => Some(Action::ToggleCategories),
        (Tab::Search, KeyCode::Left) => Some(Action::Left),
        (Tab::Search, KeyCode::Right) => Some(Action::Right),
        _ => None,
    }
}
