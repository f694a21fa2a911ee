//! `cpu_probe`: CPU utilisation from the aggregate line of /proc/stat, as the
//! share of non-idle time since the previous sample.

use super::{read_proc, Probe, SourceSpec};
use crate::error::{Error, Result};
use crate::value::{Reading, Unit};

#[derive(Default)]
pub struct CpuProbe {
    /// (busy, total) jiffies at the previous sample.
    last: Option<(u64, u64)>,
}

impl Probe for CpuProbe {
    fn sources(&self) -> Vec<SourceSpec> {
        vec![
            SourceSpec::new("cpu_usage", Unit::Percent),
            SourceSpec::new("cpu_count", Unit::Count),
        ]
    }

    fn sample(&mut self) -> Result<Vec<Reading>> {
        let text = read_proc("/proc/stat")?;
        let (busy, total) = cpu_jiffies(&text)?;
        let usage = match self.last {
            Some((b0, t0)) if total > t0 => {
                (busy.saturating_sub(b0)) as f64 * 100.0 / (total - t0) as f64
            }
            _ => 0.0,
        };
        self.last = Some((busy, total));
        let cpus = text
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        Ok(vec![Reading::Num(usage), Reading::Num(cpus as f64)])
    }
}

/// (busy, total) jiffies of the `cpu ` line; idle and iowait are not busy.
pub fn cpu_jiffies(stat: &str) -> Result<(u64, u64)> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| Error::Proc("/proc/stat has no cpu line".into()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return Err(Error::Proc(format!(
            "unexpected /proc/stat cpu line: {line}"
        )));
    }
    // user nice system idle iowait irq softirq steal (guest is already in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat() {
        let (busy, total) = cpu_jiffies("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!((busy, total), (20, 100));
        assert!(cpu_jiffies("intr 1 2").is_err());
        let mut p = CpuProbe::default();
        p.sample().unwrap();
        let r = p.sample().unwrap();
        let u = r[0].num().unwrap();
        assert!((0.0..=100.0).contains(&u));
        assert!(r[1].num().unwrap() >= 1.0);
    }
}
