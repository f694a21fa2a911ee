//! `process_probe`: the node's processes with their CPU and memory use,
//! from /proc/<pid>/stat. CPU is the share of one core used since the
//! previous sample.

use std::collections::HashMap;

use super::{Probe, SourceSpec};
use crate::error::Result;
use crate::value::{Reading, Unit};

/// How many processes the `processes` table lists (the busiest first).
const TABLE_ROWS: usize = 20;

#[derive(Default)]
pub struct ProcessProbe {
    /// pid → (utime+stime ticks, when) at the previous sample.
    last: HashMap<u32, u64>,
    last_at: Option<std::time::Instant>,
}

struct Proc {
    pid: u32,
    comm: String,
    ticks: u64,
    rss_bytes: u64,
}

impl Probe for ProcessProbe {
    fn sources(&self) -> Vec<SourceSpec> {
        vec![
            SourceSpec::new("process_count", Unit::Count),
            SourceSpec::new("processes", Unit::Text),
        ]
    }

    fn default_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(2000)
    }

    fn sample(&mut self) -> Result<Vec<Reading>> {
        let now = std::time::Instant::now();
        let procs = list_processes();
        let secs = self
            .last_at
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let hz = clock_ticks_per_second();
        let mut rows: Vec<(f64, &Proc)> = procs
            .iter()
            .map(|p| {
                let cpu = match self.last.get(&p.pid) {
                    Some(&t0) if secs > 0.0 => {
                        p.ticks.saturating_sub(t0) as f64 / hz / secs * 100.0
                    }
                    _ => 0.0,
                };
                (cpu, p)
            })
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.rss_bytes.cmp(&a.1.rss_bytes)));
        let mut table = String::from("pid comm cpu_percent rss_bytes");
        for (cpu, p) in rows.iter().take(TABLE_ROWS) {
            table.push_str(&format!(
                "\n{} {} {:.1} {}",
                p.pid, p.comm, cpu, p.rss_bytes
            ));
        }
        self.last = procs.iter().map(|p| (p.pid, p.ticks)).collect();
        self.last_at = Some(now);
        Ok(vec![Reading::Num(procs.len() as f64), Reading::Text(table)])
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects; it returns -1 on error.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Every process that could be read; processes that exit while we read are skipped.
fn list_processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let page = page_size();
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat, page)
        })
        .collect()
}

/// Parse `/proc/<pid>/stat`; comm may hold spaces and parentheses, so the
/// fields are counted from the last ')'.
fn parse_stat(pid: u32, stat: &str, page: u64) -> Option<Proc> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.replace(char::is_whitespace, "_");
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15, rss 24.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let rss: u64 = rest.get(21)?.parse().ok()?;
    Some(Proc {
        pid,
        comm,
        ticks: utime + stime,
        rss_bytes: rss * page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000000 25 18446744073709551615";
        let p = parse_stat(42, s, 4096).unwrap();
        assert_eq!(
            (p.comm.as_str(), p.ticks, p.rss_bytes),
            ("a_(b)_c", 10, 25 * 4096)
        );
        assert!(parse_stat(1, "1 (x) S", 4096).is_none());
    }

    #[test]
    fn samples_this_machine() {
        let mut p = ProcessProbe::default();
        let r = p.sample().unwrap();
        assert!(r[0].num().unwrap() >= 1.0);
        match &r[1] {
            Reading::Text(t) => assert!(t.starts_with("pid comm")),
            _ => panic!("table is text"),
        }
    }
}
