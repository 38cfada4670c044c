//! fanotify event records (FID mode, with info records) and proc-connector datagrams, as
//! read from the kernel: a parse error or an empty list, never a panic or an overread.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volguard_fuzz::watch::fanotify;

fuzz_target!(|data: &[u8]| {
    let _ = fanotify::parse_events(data);
    let _ = fanotify::parse_proc_events(data);
});
