//! `testfleet`: one binary for every machine — `run` for developers and CI, `coordinator` and `agent`
//! for the fleet. This file only parses, sets up logging, and maps the result to an exit code.

#[cfg(feature = "jemalloc")]
mod allocator;
mod answer;
mod args;
mod cargo;
mod commands;
mod environ;
mod error;
mod filterset;
mod history_client;
mod junit_import;
mod local;
mod nextest_config;
mod prepare;
mod process;
mod remote;
mod reporter;
mod rerun;
mod security_args;
mod suite_manifest;
mod telemetry;
mod tool_suite;
mod upload_files;
mod watch;

use clap::Parser;

fn main() {
    // SAFETY: first thing in main, before any thread is started.
    unsafe { environ::scrub() };
    // The sandbox helper is a small single-threaded process: it starts before anything else.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == process::SANDBOX_HELPER)
    {
        std::process::exit(testfleet_agent::sandbox::serve_helper());
    }
    let cli = args::Cli::parse();
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
