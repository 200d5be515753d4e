//! Standard output that a closed pipe cannot crash: std's `println!` panics
//! on a write error, so `rampart check -i inv.yaml | true` used to end in a
//! panic. A reader that went away wants no more output: the process ends
//! quietly with exit code 0, as ripgrep does; any other write error is
//! reported and exits 1.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Writes `args` (and a newline with `newline`) to stdout.
pub fn write(args: Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        // Block-buffered when piped: a closed pipe shows up on flush.
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}
