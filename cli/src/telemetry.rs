//! Diagnostics on stderr through `tracing`. Servers log at `info` by default; `run` only warns, so
//! its report stays readable.

use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};

pub fn init(cli: &Cli) {
    let default = match cli.command {
        Command::Coordinator(_) | Command::Agent(_) => "info,h2=warn,tower=warn,hyper=warn",
        _ => "warn",
    };
    let filter = cli
        .log
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
