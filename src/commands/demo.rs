use crate::cli::{DataArgs, DemoArgs};
use crate::config::Config;
use crate::data::deepfashion::PARTITION_FILE;
use crate::data::synth::SynthOptions;
use crate::train::events::CheckpointKind;
use crate::train::run_dir::RunDir;
use crate::train::trainer::TrainJob;

/// The built-in synthetic set → its split table → training with the configured
/// (CPU demo) defaults, resuming the demo run if one exists.
pub fn run(config: &Config, args: &DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| config.data.root.clone());
    if dir.join(PARTITION_FILE).is_file() {
        eprintln!("using the dataset at {}", dir.display());
    } else {
        eprintln!("making the built-in synthetic dataset at {}", dir.display());
        let opts = SynthOptions {
            items: config.synth.items,
            size: config.synth.size,
            seed: config.synth.seed,
        };
        super::synth::write(&opts, &dir, true)?;
    }
    let ds = super::open_dataset(
        config,
        &DataArgs {
            data: Some(dir.clone()),
            strict: false,
        },
    )?;
    eprint!(
        "{}",
        super::splits::render_table(&ds.summary(config.data.gallery))
    );
    drop(ds);
    let run = RunDir::new(&config.train.run);
    let resume = run.checkpoint(CheckpointKind::Last).exists();
    if resume {
        eprintln!(
            "continuing the demo run in {} (delete it to start over)",
            run.root.display()
        );
    }
    let job = TrainJob {
        config: config.clone(),
        data: dir,
        run: run.root,
        resume,
    };
    super::train::run_job(&job, false)
}
