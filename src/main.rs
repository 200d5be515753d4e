//! The `rampart` command line: argument parsing, output, exit codes.

fn main() {}
