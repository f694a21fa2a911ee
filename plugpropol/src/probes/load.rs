//! `load_probe`: load averages and runnable tasks from /proc/loadavg.

use super::{read_proc, Probe, SourceSpec};
use crate::error::{Error, Result};
use crate::value::{Reading, Unit};

pub struct LoadProbe;

impl Probe for LoadProbe {
    fn sources(&self) -> Vec<SourceSpec> {
        vec![
            SourceSpec::new("load_1", Unit::Load),
            SourceSpec::new("load_5", Unit::Load),
            SourceSpec::new("load_15", Unit::Load),
            SourceSpec::new("runnable", Unit::Count),
        ]
    }

    fn sample(&mut self) -> Result<Vec<Reading>> {
        parse_loadavg(&read_proc("/proc/loadavg")?)
    }
}

/// `0.52 0.58 0.59 2/345 12345` → load_1, load_5, load_15, runnable.
pub fn parse_loadavg(text: &str) -> Result<Vec<Reading>> {
    let bad = || Error::Proc(format!("unexpected /proc/loadavg: {text:?}"));
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() < 4 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(4);
    for v in &f[..3] {
        out.push(Reading::Num(v.parse().map_err(|_| bad())?));
    }
    let runnable: f64 = f[3]
        .split('/')
        .next()
        .and_then(|r| r.parse().ok())
        .ok_or_else(bad)?;
    out.push(Reading::Num(runnable));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loadavg() {
        let r = parse_loadavg("0.52 0.58 1.50 3/345 12345\n").unwrap();
        assert_eq!(
            r,
            vec![
                Reading::Num(0.52),
                Reading::Num(0.58),
                Reading::Num(1.5),
                Reading::Num(3.0)
            ]
        );
        assert!(parse_loadavg("garbage").is_err());
        assert!(LoadProbe.sample().is_ok());
    }
}
