//! Host and process facts through `sysinfo`: memory, load and uptime of the host, and
//! the resident memory and CPU time of one process (the agent). `volguard status` shows
//! them and the agent's metrics export them; both read them fresh when asked.

use serde::Serialize;
use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// The host as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct SystemFacts {
    pub memory_total_bytes: u64,
    /// Memory available for new work without swapping (MemAvailable on Linux).
    pub memory_available_bytes: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub uptime_seconds: u64,
}

/// One process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFacts {
    pub pid: u32,
    pub resident_memory_bytes: u64,
    /// User plus system CPU time of all its threads since it started.
    pub cpu_seconds_total: f64,
    /// Seconds since it started.
    pub run_time_seconds: u64,
}

/// The host's facts now.
pub fn system() -> SystemFacts {
    let mut sys = System::new();
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    let load = System::load_average();
    SystemFacts {
        memory_total_bytes: sys.total_memory(),
        memory_available_bytes: sys.available_memory(),
        load1: load.one,
        load5: load.five,
        load15: load.fifteen,
        uptime_seconds: System::uptime(),
    }
}

/// Process `pid`'s facts now; None when it does not exist.
pub fn process(pid: u32) -> Option<ProcessFacts> {
    let mut sys = System::new();
    let id = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[id]),
        true,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    let p = sys.process(id)?;
    Some(ProcessFacts {
        pid,
        resident_memory_bytes: p.memory(),
        cpu_seconds_total: p.accumulated_cpu_time() as f64 / 1000.0,
        run_time_seconds: p.run_time(),
    })
}

/// This process's facts.
pub fn own_process() -> Option<ProcessFacts> {
    process(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_facts_are_plausible() {
        let s = system();
        assert!(s.memory_total_bytes > 0, "{s:?}");
        assert!(s.memory_available_bytes <= s.memory_total_bytes, "{s:?}");
        assert!(s.load1 >= 0.0 && s.load5 >= 0.0 && s.load15 >= 0.0, "{s:?}");
        assert!(s.uptime_seconds > 0, "{s:?}");
        // Burn a little CPU so the counter has something to count.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i ^ (x >> 3));
        }
        std::hint::black_box(x);
        let p = own_process().expect("this process exists");
        assert_eq!(p.pid, std::process::id());
        assert!(p.resident_memory_bytes > 0, "{p:?}");
        assert!(p.resident_memory_bytes < s.memory_total_bytes, "{p:?}");
        assert!(p.cpu_seconds_total > 0.0, "{p:?}");
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_facts() {
        // Above the kernel's pid_max limit (4194304), so never a real process.
        assert!(process(u32::MAX - 1).is_none());
    }
}
