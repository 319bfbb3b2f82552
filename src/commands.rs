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
    match cli.command {
        None => demo::run(
            &config,
            &crate::cli::DemoArgs {
                dir: None,
                theme: None,
            },
            log,
        ),
        Some(Command::Demo(args)) => demo::run(&config, &args, log),
        Some(Command::Dashboard(args)) => dashboard::run(&config, &args, log),
        Some(Command::Watch(args)) => watch::run(&config, &args, log),
        Some(Command::Synth(args)) => synth::run(&config, &args),
        Some(Command::Splits(args)) => splits::run(&config, &args),
        Some(Command::Train(args)) => train::run(&config, &args),
        Some(Command::Bench(cmd)) => bench::run(&config, &cmd),
        Some(Command::Index(args)) => index::run(&config, &args),
        Some(Command::Search(args)) => search::run(&config, &args),
        Some(Command::Eval(args)) => eval::run(&config, &args),
        Some(Command::Runs(args)) => runs::run(&config, &args),
    }
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

/// Caps the global rayon pool (decode, Candle's CPU kernels); 0 keeps one per core.
fn set_threads(threads: usize) {
    if threads > 0 {
        // Fails only if the pool already exists; the existing one is kept.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}
