use crate::cli::{DataArgs, DemoArgs};
use crate::config::Config;
use crate::data::deepfashion::PARTITION_FILE;
use crate::data::synth::SynthOptions;

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
            data: Some(dir),
            strict: false,
        },
    )?;
    print!(
        "{}",
        super::splits::render_table(&ds.summary(config.data.gallery))
    );
    Ok(())
}
