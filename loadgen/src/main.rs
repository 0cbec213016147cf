//! `imks-loadgen <SCENARIO> [OPTIONS]`: see `--help` and loadgen/README.md.
//!
//! Exit status: 0 for a clean run; 3 for a run that lost messages, received some twice, or
//! whose connections failed or dropped (`--allow-loss` makes it 0; the report says what
//! happened either way); 2 for bad parameters; 1 for a run that could not be carried out.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use imks_loadgen::params::Cli;
use imks_loadgen::{multiproc, plot, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.worker {
        return match multiproc::worker_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("ERROR {e}");
                ExitCode::from(1)
            }
        };
    }
    let Some(scenario) = cli.scenario else {
        eprintln!("imks-loadgen: a scenario is required (echo, ack, fanout, chat, connect, idle, soak)");
        return ExitCode::from(2);
    };
    let mut p = cli.params(scenario);
    p.progress = !cli.quiet && std::io::stderr().is_terminal();
    p.worker_exe = std::env::current_exe().ok();
    let report = match imks_loadgen::run(&p) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imks-loadgen: {e}");
            return ExitCode::from(match e {
                Error::Config(_) | Error::Url { .. } => 2,
                _ => 1,
            });
        }
    };
    let json_on_stdout = cli.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if json_on_stdout {
        eprint!("{}", report.summary());
    } else {
        print!("{}", report.summary());
    }
    let mut status = ExitCode::SUCCESS;
    if let Some(path) = &cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) if json_on_stdout => println!("{j}"),
            Ok(j) => {
                if let Err(e) = std::fs::write(path, j + "\n") {
                    eprintln!("imks-loadgen: writing {}: {e}", path.display());
                    status = ExitCode::from(1);
                }
            }
            Err(e) => {
                eprintln!("imks-loadgen: encoding the report: {e}");
                status = ExitCode::from(1);
            }
        }
    }
    if let Some(path) = &cli.plot {
        if let Err(e) = std::fs::write(path, plot::svg(&report)) {
            eprintln!("imks-loadgen: writing {}: {e}", path.display());
            status = ExitCode::from(1);
        }
    }
    let problems = report.problems();
    if !problems.is_empty() && !cli.allow_loss && status == ExitCode::SUCCESS {
        eprintln!("imks-loadgen: FAILED: {} (--allow-loss exits 0 all the same)", problems.join(", "));
        status = ExitCode::from(3);
    }
    status
}
