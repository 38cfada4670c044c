//! volguard's entry point: parse the command line, set up logging, run the command, and
//! turn its outcome into the exit code promised by the CLI contract.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use volguard::cli::{Cli, Command};
use volguard::error::exit;

/// Keeps glibc from parking freed pack buffers (16 MiB each) on per-thread heaps: with a
/// fixed mmap threshold, large buffers go back to the kernel when freed, so RSS follows
/// what is really in use.
///
/// Fixing the mmap threshold also freezes the trim threshold at its 128 KiB default: a
/// heap then gives memory back whenever that much is free at its top, and the HTTP read
/// buffers of a few hundred KiB are faulted in again and again. A full S3 restore of the
/// benchmark data took 53,000-66,000 page faults with 128 KiB and 32,000-35,000 with
/// 8 MiB (peak RSS 106-111 against 112-115 MiB); a backup 81,000-84,000 against 53,000.
fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// SIGINT ends the process at once with the promised exit code 130. Stopping anywhere is
/// safe: the repository only ever gains complete objects and the snapshot is written last,
/// so an interrupted backup leaves packs the next run reuses, and a restore into a volume
/// swaps directories atomically or not at all.
extern "C" fn on_sigint(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(exit::INTERRUPTED) }
}

fn exit_on_sigint() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only calls an async-signal-safe function.
    if let Err(e) = unsafe { sigaction(Signal::SIGINT, &action) } {
        eprintln!("volguard: cannot install the SIGINT handler: {e}");
    }
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    // The agent handles its signals itself (finish or abandon within a bound, thaw
    // containers), and says what it does at info level, for the journal.
    let agent = matches!(cli.command, Command::Agent(_));
    // `mount` unmounts on SIGINT (and SIGTERM) and then ends with 0.
    if !agent && !matches!(cli.command, Command::Mount(_)) {
        exit_on_sigint();
    }
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) if agent => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("VOLGUARD_LOG")
        // The AWS SDK warns about absent optional config files; those are not our errors.
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},aws_config=error")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let code = match volguard::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volguard: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
