//! What a node reports about itself: load, free memory, uptime, system
//! (the `/krg/nodes/<id>/` files and least-load placement).

use krg_proto::proc::NodeStat;

/// This node's figures now; `jobs` is how many jobs its krgd runs.
pub fn read(jobs: u32) -> NodeStat {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    let load1: f64 = fields.first().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let mem_free = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let (arch, uname) = match nix::sys::utsname::uname() {
        Ok(u) => {
            let s = |x: &std::ffi::OsStr| x.to_string_lossy().into_owned();
            let line = format!(
                "{} {} {} {} {}",
                s(u.sysname()),
                s(u.nodename()),
                s(u.release()),
                s(u.version()),
                s(u.machine())
            );
            (s(u.machine()), line)
        }
        Err(_) => (String::new(), String::new()),
    };
    NodeStat {
        load: fields.join(" "),
        load1_milli: (load1 * 1000.0).round().clamp(0.0, u32::MAX as f64) as u32,
        mem_free,
        uptime_s: super::procfs::uptime_secs() as u64,
        arch,
        uname,
        jobs,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_of_this_machine() {
        let s = super::read(3);
        assert_eq!(s.load.split(' ').count(), 3, "{s:?}");
        assert!(
            s.mem_free > 0 && s.uptime_s > 0 && !s.arch.is_empty(),
            "{s:?}"
        );
        assert!(s.uname.starts_with("Linux "), "{s:?}");
        assert_eq!(s.jobs, 3);
    }
}
