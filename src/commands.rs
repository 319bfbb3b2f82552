//! The binary's jobs. This is the application edge: errors are `anyhow` with context.

mod bench;
mod dashboard;
mod demo;
mod eval;
mod index;
mod runs;
mod search;
mod splits;
mod synth;
mod train;
mod watch;
mod weights;

use anyhow::Context;

use crate::cli::{Cli, Command, DataArgs};
use crate::config::Config;
use crate::data::deepfashion::{Dataset, LoadOptions};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // The dashboard commands set up logging themselves (into the run's log file,
    // nothing on the terminal they draw on).
    let log = cli.log.as_deref();
    if !matches!(
        cli.command,
        None | Some(Command::Demo(_) | Command::Dashboard(_) | Command::Watch(_))
    ) {
        crate::logging::init(log, true).context("cannot open the log file")?;
    }
    let config = Config::load(cli.config.as_deref())?;
    // `--device` of the commands that run a trained run's model: for every model this
    // process loads (the dashboard's workers included).
    if let Some(choice) = match &cli.command {
        Some(Command::Index(a)) => a.device,
        Some(Command::Search(a)) => a.device,
        Some(Command::Eval(a)) => a.device,
        Some(Command::Dashboard(a)) => a.device,
        Some(Command::Watch(a)) => a.device,
        _ => None,
    } {
        crate::run::device::set_inference_device(choice);
    }
    let result = dispatch(&cli, &config, log);
    // A reader that closed stdout has all it wanted: a clean stop, not an error.
    match result {
        Err(e) if crate::output::is_closed(e.as_ref()) => Ok(()),
        other => other,
    }
}

fn dispatch(cli: &Cli, config: &Config, log: Option<&std::path::Path>) -> anyhow::Result<()> {
    match &cli.command {
        None => demo::run(
            config,
            &crate::cli::DemoArgs {
                dir: None,
                theme: None,
            },
            log,
        ),
        Some(Command::Demo(args)) => demo::run(config, args, log),
        Some(Command::Dashboard(args)) => dashboard::run(config, args, log),
        Some(Command::Watch(args)) => watch::run(config, args, log),
        Some(Command::Synth(args)) => synth::run(config, args),
        Some(Command::Splits(args)) => splits::run(config, args),
        Some(Command::Train(args)) => train::run(config, cli.config.as_deref(), args),
        Some(Command::Bench(cmd)) => bench::run(config, cmd),
        Some(Command::Index(args)) => index::run(config, args),
        Some(Command::Search(args)) => search::run(config, args),
        Some(Command::Eval(args)) => eval::run(config, args),
        Some(Command::Runs(args)) => runs::run(config, args),
        Some(Command::Weights(cmd)) => weights::run(cmd),
    }
}

/// The one-line message of an error and its causes, joined by ": " as anyhow's `{:#}`
/// does, but without a cause its parent already quotes: library errors print their
/// source in their own message (`cannot read config file F: No such file…`) for
/// readers that show one level, and the chain would repeat it.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Opens the dataset named by `--data` (or `data.root`), echoing its warnings.
fn open_dataset(config: &Config, args: &DataArgs) -> anyhow::Result<Dataset> {
    let root = args
        .data
        .clone()
        .unwrap_or_else(|| config.data.root.clone());
    let ds = Dataset::open(
        &root,
        LoadOptions {
            strict: args.strict || config.data.strict,
            skip_file_check: false,
        },
    )?;
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    Ok(ds)
}

/// Where a command on a run finds its dataset.
struct RunData {
    /// `--data`, else the dataset the run trained on, else `data.root`.
    root: std::path::PathBuf,
    /// The run's loader settings (crop, image limits), else the configured ones.
    settings: crate::config::DataConfig,
    /// Whether `root` came from the run's `config.toml`.
    from_run: bool,
}

impl RunData {
    /// The dataset of a command on `run` (`index`, `eval`, the dashboard, `watch`).
    fn of(config: &Config, run: &std::path::Path, flag: Option<&std::path::Path>) -> Self {
        let saved = crate::run::settings::load(run).ok();
        let settings = saved
            .as_ref()
            .map_or_else(|| config.data.clone(), |c| c.data.clone());
        match (flag, saved) {
            (Some(root), _) => Self {
                root: root.to_path_buf(),
                settings,
                from_run: false,
            },
            (None, Some(saved)) => Self {
                root: saved.data.root,
                settings,
                from_run: true,
            },
            (None, None) => Self {
                root: config.data.root.clone(),
                settings,
                from_run: false,
            },
        }
    }

    /// A run's dataset that is not (or no longer) where the run trained on it is named
    /// with the way out (`--data`), not with a hint to make a new one there.
    fn check(&self, run: &std::path::Path) -> anyhow::Result<()> {
        let partition = self.root.join(crate::data::deepfashion::PARTITION_FILE);
        if self.from_run && !partition.is_file() {
            anyhow::bail!(
                "run {} trained on the dataset at {} (data.root in {}), which is not there: {} is missing; pass --data DIR to use the dataset where it is now",
                run.display(),
                self.root.display(),
                crate::run::folder::RunDir::new(run).config().display(),
                partition.display()
            );
        }
        Ok(())
    }
}

/// Caps the global rayon pool (decode, Candle's CPU kernels); 0 keeps one per core.
fn set_threads(threads: usize) {
    if threads > 0 {
        // Fails only if the pool already exists; the existing one is kept.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let read = crate::config::ConfigError::Read {
            path: "cfg.toml".into(),
            source: io,
        };
        let err = anyhow::Error::new(read).context("loading settings");
        assert_eq!(
            error_message(&err),
            "loading settings: cannot read config file cfg.toml: no such file"
        );
        // Causes the message does not quote are kept, as `{:#}` keeps them.
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&plain), format!("{plain:#}"));
    }
}
