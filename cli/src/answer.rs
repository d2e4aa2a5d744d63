//! Printing a query's answer on stdout: a reader that stops early (`testfleet runs | head`) ends
//! the command quietly, as Unix tools do, instead of a panic in `println!`. SIGPIPE itself stays
//! ignored, since the same commands talk to a coordinator over sockets.

use std::io::Write;

/// `println!` for a query's answer; see the module.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::answer::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Writes one line of the answer. When stdout's reader has gone, the command ends with success:
/// the reader took what it wanted.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the answer to stdout: {e}");
        std::process::exit(1);
    }
}
