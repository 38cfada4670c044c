//! Command output on standard output. `println!` panics when the reader has gone away
//! (`volguard --json snapshots | head -1`), printing a backtrace over the pipeline; here a
//! closed pipe ends the command quietly with 141, the status a shell reports for a
//! process that SIGPIPE ended, and any other write error says what failed.

use std::io::Write;

use crate::error::exit;

/// `println!` for command output (see the module doc).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output (see the module doc).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

/// Writes to standard output; exits on failure (see the module doc).
pub fn write(args: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(exit::BROKEN_PIPE);
        }
        eprintln!("volguard: error: cannot write to standard output: {e}");
        std::process::exit(exit::ERROR);
    }
}
