//! `mem_probe`: memory figures from /proc/meminfo.

use super::{read_proc, Probe, SourceSpec};
use crate::error::{Error, Result};
use crate::value::{Reading, Unit};

/// ram_total = MemTotal, ram_free = MemFree, ram_available = MemAvailable
/// (free plus reclaimable cache: what a new process can really get).
pub struct MemProbe;

impl Probe for MemProbe {
    fn sources(&self) -> Vec<SourceSpec> {
        vec![
            SourceSpec::new("ram_total", Unit::Bytes),
            SourceSpec::new("ram_free", Unit::Bytes),
            SourceSpec::new("ram_available", Unit::Bytes),
        ]
    }

    fn sample(&mut self) -> Result<Vec<Reading>> {
        let text = read_proc("/proc/meminfo")?;
        ["MemTotal", "MemFree", "MemAvailable"]
            .iter()
            .map(|key| meminfo_bytes(&text, key).map(|b| Reading::Num(b as f64)))
            .collect()
    }
}

/// The value of `key` in meminfo text, in bytes (the file says kB).
pub fn meminfo_bytes(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kb * 1024)
        })
        .ok_or_else(|| Error::Proc(format!("/proc/meminfo has no {key} line")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let t = "MemTotal:       24522352 kB\nMemFree:        1000 kB\nMemAvailable:   2000 kB\n";
        assert_eq!(meminfo_bytes(t, "MemTotal").unwrap(), 24522352 * 1024);
        assert_eq!(meminfo_bytes(t, "MemFree").unwrap(), 1000 * 1024);
        assert!(meminfo_bytes(t, "Mem").is_err());
        let live = MemProbe.sample().unwrap();
        assert!(live[0].num().unwrap() >= live[1].num().unwrap());
    }
}
