//! A server process's CPU share and resident memory over a measured run, read from `/proc`
//! (Linux only; the server must run on this machine).
//!
//! CPU is the process's user + system time (all threads, `/proc/PID/stat` fields 14 and 15)
//! over the run's wall time, as a percentage of one core (200 % = two cores busy). Memory is
//! the resident set (`VmRSS` of `/proc/PID/status`) at the end of the run.

use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on Linux's mainstream
/// architectures whatever the kernel's own tick rate).
const TICKS_PER_SECOND: f64 = 100.0;

/// A server process's usage during one measured run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ServerUsage {
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory at the end of the run, in bytes.
    pub rss_bytes: u64,
}

/// The process's CPU ticks at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    ticks: u64,
    at: Instant,
}

/// Reads the CPU ticks of process `pid` now.
pub(crate) fn sample(pid: u32) -> anyhow::Result<CpuSample> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--server-pid {pid}: cannot read {path}"))?;
    let ticks = cpu_ticks(&text)
        .with_context(|| format!("--server-pid {pid}: {path} has no utime/stime fields"))?;
    Ok(CpuSample {
        ticks,
        at: Instant::now(),
    })
}

/// The usage of process `pid` since `start`.
pub(crate) fn since(pid: u32, start: CpuSample) -> anyhow::Result<ServerUsage> {
    let end = sample(pid)?;
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .with_context(|| format!("--server-pid {pid}: cannot read {path}"))?;
    Ok(ServerUsage {
        cpu_percent: cpu_percent(
            end.ticks.saturating_sub(start.ticks),
            end.at.duration_since(start.at),
        ),
        rss_bytes: rss_bytes(&status).unwrap_or(0),
    })
}

/// utime + stime from the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_percent(ticks: u64, wall: Duration) -> f64 {
    let secs = wall.as_secs_f64();
    if secs > 0.0 {
        ticks as f64 / TICKS_PER_SECOND / secs * 100.0
    } else {
        0.0
    }
}

/// `VmRSS` of `/proc/PID/status`, in bytes.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let stat = "42 (cella (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("42 (cella) S 1"), None);
        assert_eq!(cpu_percent(150, Duration::from_secs(2)), 75.0);
        assert_eq!(cpu_percent(150, Duration::ZERO), 0.0);
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tcella\nVmPeak:\t 9000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(rss_bytes(status), Some(2 * 1024 * 1024));
        assert_eq!(rss_bytes("Name:\tcella\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let pid = std::process::id();
        let start = sample(pid).unwrap();
        let usage = since(pid, start).unwrap();
        assert!(usage.rss_bytes > 0);
        assert!(sample(u32::MAX).is_err());
    }
}
