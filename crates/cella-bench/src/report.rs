//! The result section: what was run, where, and the numbers, as markdown.
//!
//! One section per `cella bench` run: a heading with the workload and date, the exact
//! command, commit, machine and each target's server version, a table of every target at
//! every level, the ratio table against the baseline target (if it was measured), and the
//! error messages seen. `bench/results/README.md` describes the format for readers.

use cella_base::UtcTime;
use std::fmt::Write as _;

use crate::stats::{ratios, LevelResult};

/// Everything a result section shows.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// Workload name, e.g. `kv-put`.
    pub workload: String,
    /// When the run started, in UTC.
    pub date: String,
    /// The command line, shell-quoted.
    pub command: String,
    /// Short git commit of the work tree, or "unknown".
    pub commit: String,
    /// Where the run happened.
    pub machine: Machine,
    /// (name, address, server version) per target, in command-line order.
    pub targets: Vec<(String, String, String)>,
    /// Settings that shape the numbers, as (name, value).
    pub settings: Vec<(String, String)>,
    /// Target the ratio table divides by.
    pub baseline: String,
    /// Every target at every level, level by level in command-line order.
    pub results: Vec<LevelResult>,
}

/// The machine the run happened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory from /proc/meminfo, in GiB.
    pub memory: String,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the run started (other work skews the numbers).
    pub load: String,
}

impl Machine {
    /// Reads this machine's description from `/proc` ("unknown" where it is unavailable).
    pub(crate) fn this() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = field(&read("/proc/cpuinfo"), "model name");
        let memory = field(&read("/proc/meminfo"), "MemTotal")
            .split_whitespace()
            .next()
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "unknown".to_string());
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
        let load = read("/proc/loadavg")
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: or_unknown(cpu_model),
            memory,
            kernel: or_unknown(kernel),
            load: or_unknown(load),
        }
    }
}

fn or_unknown(s: String) -> String {
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s
    }
}

/// The value of the first `name : value` line in a `/proc` file.
fn field(text: &str, name: &str) -> String {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default()
}

/// The short hash of the checked-out commit, marked "(modified)" when tracked files differ
/// from it, or "unknown" outside a git work tree.
pub(crate) fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]).filter(|hash| !hash.is_empty()) {
        None => "unknown".to_string(),
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => hash,
            _ => format!("{hash} (modified)"),
        },
    }
}

/// This process's command line, quoted so it can be pasted back into a shell.
pub(crate) fn command_line() -> String {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_else(|| "cella".to_string());
    let program = std::path::Path::new(&program)
        .file_name()
        .map_or(program.clone(), |f| f.to_string_lossy().into_owned());
    std::iter::once(program)
        .chain(args)
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc_now() -> String {
    format_utc(UtcTime::now())
}

/// Formats a UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
fn format_utc(t: UtcTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

impl Report {
    /// Renders the section as markdown (ends with a blank line, ready to append).
    pub(crate) fn to_markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "## {} — {}\n", self.workload, self.date);
        let _ = writeln!(w, "- command: `{}`", self.command);
        let _ = writeln!(w, "- commit: {}", self.commit);
        let m = &self.machine;
        let _ = writeln!(
            w,
            "- machine: {} CPUs ({}), {} memory, Linux {}, load average {} at start",
            m.cpus, m.cpu_model, m.memory, m.kernel, m.load
        );
        for (name, addr, version) in &self.targets {
            let _ = writeln!(w, "- target {name}: {addr}, version {version}");
        }
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(w, "- settings: {}", settings.join(", "));

        let _ = writeln!(w);
        let with_server = self.results.iter().any(|r| r.server.is_some());
        let (server_head, server_rule) = match with_server {
            true => (" server CPU % | server RSS MiB |", "---:|---:|"),
            false => ("", ""),
        };
        let _ = writeln!(
            w,
            "| target | clients | ops | ops/s | p50 µs | p99 µs | p99.9 µs | errors |{server_head}"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|{server_rule}");
        for r in &self.results {
            let server = match (with_server, r.server) {
                (false, _) => String::new(),
                (true, None) => " – | – |".to_string(),
                (true, Some(u)) => format!(
                    " {:.1} | {:.0} |",
                    u.cpu_percent,
                    u.rss_bytes as f64 / (1024.0 * 1024.0)
                ),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} |{server}",
                r.target,
                r.clients,
                r.ops,
                r.ops_per_sec,
                r.latency.p50,
                r.latency.p99,
                r.latency.p999,
                r.errors
            );
        }

        let rows = ratios(&self.results, &self.baseline);
        if !rows.is_empty() {
            let b = &self.baseline;
            let _ = writeln!(w);
            let _ = writeln!(
                w,
                "Ratios to {b} at the same level (ops/s above 1 is faster; latency below 1 is lower):\n"
            );
            let _ = writeln!(
                w,
                "| target | clients | ops/s ÷ {b} | p50 ÷ {b} | p99 ÷ {b} |"
            );
            let _ = writeln!(w, "|---|---:|---:|---:|---:|");
            for r in rows {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} |",
                    r.target,
                    r.clients,
                    ratio(r.ops_per_sec),
                    ratio(r.p50),
                    ratio(r.p99)
                );
            }
        }

        let failing: Vec<&LevelResult> = self
            .results
            .iter()
            .filter(|r| r.errors > 0 || r.clients_gave_up > 0)
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(w, "\nErrors:\n");
            for r in failing {
                for (message, n) in &r.error_kinds {
                    let _ = writeln!(
                        w,
                        "- {} at {}: {n} × {}",
                        r.target,
                        r.clients,
                        one_line(message)
                    );
                }
                if r.clients_gave_up > 0 {
                    let _ = writeln!(
                        w,
                        "- {} at {}: {} client(s) stopped early",
                        r.target, r.clients, r.clients_gave_up
                    );
                }
            }
        }
        let _ = writeln!(w);
        md
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_string(), |r| format!("{r:.2}"))
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn result(
        target: &str,
        clients: usize,
        ops_per_sec: f64,
        p50: u64,
        errors: u64,
    ) -> LevelResult {
        LevelResult {
            target: target.into(),
            clients,
            ops: (ops_per_sec * 10.0) as u64,
            ops_per_sec,
            latency: Percentiles {
                p50,
                p99: p50 * 2,
                p999: p50 * 3,
            },
            errors,
            error_kinds: if errors > 0 {
                vec![("status: Unavailable,\n message: gone".into(), errors)]
            } else {
                vec![]
            },
            clients_gave_up: 0,
            server: None,
        }
    }

    fn report(results: Vec<LevelResult>) -> Report {
        Report {
            workload: "kv-put".into(),
            date: "2025-01-02 03:04:05 UTC".into(),
            command: "cella bench kv-put --targets cella=a:1,etcd=b:2".into(),
            commit: "abc1234".into(),
            machine: Machine {
                cpus: 2,
                cpu_model: "Test CPU".into(),
                memory: "24.0 GiB".into(),
                kernel: "6.1.0".into(),
                load: "0.15".into(),
            },
            targets: vec![
                ("cella".into(), "http://a:1".into(), "0.1.0".into()),
                ("etcd".into(), "http://b:2".into(), "3.4.23".into()),
            ],
            settings: vec![("duration".into(), "10s".into())],
            baseline: "etcd".into(),
            results,
        }
    }

    #[test]
    fn renders_header_table_ratios_and_errors() {
        let md = report(vec![
            result("cella", 1, 3000.0, 300, 0),
            result("etcd", 1, 1000.0, 600, 2),
        ])
        .to_markdown();
        let expected = "\
## kv-put — 2025-01-02 03:04:05 UTC

- command: `cella bench kv-put --targets cella=a:1,etcd=b:2`
- commit: abc1234
- machine: 2 CPUs (Test CPU), 24.0 GiB memory, Linux 6.1.0, load average 0.15 at start
- target cella: http://a:1, version 0.1.0
- target etcd: http://b:2, version 3.4.23
- settings: duration 10s

| target | clients | ops | ops/s | p50 µs | p99 µs | p99.9 µs | errors |
|---|---:|---:|---:|---:|---:|---:|---:|
| cella | 1 | 30000 | 3000 | 300 | 600 | 900 | 0 |
| etcd | 1 | 10000 | 1000 | 600 | 1200 | 1800 | 2 |

Ratios to etcd at the same level (ops/s above 1 is faster; latency below 1 is lower):

| target | clients | ops/s ÷ etcd | p50 ÷ etcd | p99 ÷ etcd |
|---|---:|---:|---:|---:|
| cella | 1 | 3.00 | 0.50 | 0.50 |

Errors:

- etcd at 1: 2 × status: Unavailable, message: gone

";
        assert_eq!(md, expected);
    }

    #[test]
    fn server_usage_columns_appear_when_measured() {
        let mut measured = result("cella", 1, 3000.0, 300, 0);
        measured.server = Some(crate::usage::ServerUsage {
            cpu_percent: 42.25,
            rss_bytes: 300 * 1024 * 1024,
        });
        let md = report(vec![measured, result("etcd", 1, 1000.0, 600, 0)]).to_markdown();
        assert!(md.contains("| errors | server CPU % | server RSS MiB |"));
        assert!(md.contains("| cella | 1 | 30000 | 3000 | 300 | 600 | 900 | 0 | 42.2 | 300 |"));
        assert!(md.contains("| etcd | 1 | 10000 | 1000 | 600 | 1200 | 1800 | 0 | – | – |"));
    }

    #[test]
    fn no_ratio_table_without_the_baseline() {
        let mut r = report(vec![result("cella", 1, 3000.0, 300, 0)]);
        r.baseline = "etcd".into();
        let md = r.to_markdown();
        assert!(!md.contains("Ratios"));
        assert!(!md.contains("Errors"));
    }

    #[test]
    fn dates() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(
            format_utc(UtcTime::from_system_time(
                UNIX_EPOCH + Duration::from_secs(0)
            )),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(
            format_utc(UtcTime::from_system_time(
                UNIX_EPOCH + Duration::from_secs(951_782_400)
            )),
            "2000-02-29 00:00:00 UTC"
        );
        assert_eq!(
            format_utc(UtcTime::from_system_time(
                UNIX_EPOCH + Duration::from_secs(1_735_787_045)
            )),
            "2025-01-02 03:04:05 UTC"
        );
    }

    #[test]
    fn proc_fields_and_quoting() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Some CPU @ 2GHz\n";
        assert_eq!(field(cpuinfo, "model name"), "Some CPU @ 2GHz");
        assert_eq!(field(cpuinfo, "missing"), "");
        assert_eq!(shell_quote("--targets=a=b:1,c"), "--targets=a=b:1,c");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
