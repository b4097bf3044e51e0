//! `sluice-loadgen`: the command line over the `sluice_loadgen` library.

use std::process::ExitCode;

use anyhow::Context;
use sluice_loadgen::cli::{self, Outcome};

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &cli::Cli) -> anyhow::Result<()> {
    match cli::execute(cli, true).context("the run failed")? {
        Outcome::Run(report) => {
            print!("{}", sluice_loadgen::percentile_table(&report.summary));
            println!("outputs: {}/index.html", report.out_dir.display());
        }
        Outcome::Compare { runs, table } => {
            for (name, report) in &runs {
                println!("== {name}");
                print!("{}", sluice_loadgen::percentile_table(&report.summary));
                println!("outputs: {}/index.html", report.out_dir.display());
            }
            println!("\n{table}");
        }
    }
    Ok(())
}
