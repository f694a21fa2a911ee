//! Readers for the /proc files a checkpoint needs.

use std::path::Path;

use crate::error::{ChkptError, Result};
use crate::image::{MmParams, Rlimit};

pub fn read_to_string(path: impl AsRef<Path>) -> Result<String> {
    let p = path.as_ref();
    std::fs::read_to_string(p).map_err(|e| ChkptError::io(p, e))
}

pub fn readlink(path: impl AsRef<Path>) -> Result<String> {
    let p = path.as_ref();
    std::fs::read_link(p)
        .map(|l| l.to_string_lossy().into_owned())
        .map_err(|e| ChkptError::io(p, e))
}

fn parse_err(what: &str, detail: impl Into<String>) -> ChkptError {
    ChkptError::Parse {
        what: what.into(),
        detail: detail.into(),
    }
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

impl MapLine {
    pub fn prot(&self) -> u32 {
        let b = self.perms.as_bytes();
        let mut p = 0;
        if b.first() == Some(&b'r') {
            p |= libc::PROT_READ as u32;
        }
        if b.get(1) == Some(&b'w') {
            p |= libc::PROT_WRITE as u32;
        }
        if b.get(2) == Some(&b'x') {
            p |= libc::PROT_EXEC as u32;
        }
        p
    }
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
}

pub fn parse_maps(text: &str) -> Result<Vec<MapLine>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_map_line)
        .collect()
}

fn parse_map_line(line: &str) -> Result<MapLine> {
    let bad = || parse_err("maps line", line);
    let mut it = line.splitn(6, ' ');
    let range = it.next().ok_or_else(bad)?;
    let perms = it.next().ok_or_else(bad)?.to_string();
    let offset = u64::from_str_radix(it.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    let _dev = it.next().ok_or_else(bad)?;
    let inode = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-').ok_or_else(bad)?;
    let start = u64::from_str_radix(s, 16).map_err(|_| bad())?;
    let end = u64::from_str_radix(e, 16).map_err(|_| bad())?;
    Ok(MapLine {
        start,
        end,
        perms,
        offset,
        inode,
        path,
    })
}

/// Fields of /proc/PID/stat after the `(comm)` field, indexed from field 3.
pub struct Stat {
    pub comm: String,
    /// The state letter (field 3: R, S, D, T, t, Z, …).
    pub state: char,
    pub fields: Vec<u64>,
}

impl Stat {
    /// Field number `n` as numbered in proc(5) (1-based; n >= 3).
    pub fn field(&self, n: usize) -> u64 {
        self.fields.get(n.wrapping_sub(3)).copied().unwrap_or(0)
    }
    pub fn ppid(&self) -> i32 {
        self.field(4) as i32
    }
}

pub fn parse_stat(text: &str) -> Result<Stat> {
    let open = text.find('(').ok_or_else(|| parse_err("stat", text))?;
    let close = text.rfind(')').ok_or_else(|| parse_err("stat", text))?;
    let comm = text.get(open + 1..close).unwrap_or("").to_string();
    let rest = text.get(close + 1..).unwrap_or("");
    let mut fields = Vec::new();
    let mut state = '?';
    for (i, tok) in rest.split_whitespace().enumerate() {
        if i == 0 {
            state = tok.chars().next().unwrap_or('?');
            fields.push(0); // state letter (field 3)
            continue;
        }
        // negative values (priority, nice) are stored as their two's complement
        let v = tok
            .parse::<u64>()
            .or_else(|_| tok.parse::<i64>().map(|v| v as u64))
            .map_err(|_| parse_err("stat field", tok))?;
        fields.push(v);
    }
    Ok(Stat {
        comm,
        state,
        fields,
    })
}

pub fn mm_params(stat: &Stat, auxv: &[u8]) -> MmParams {
    let auxv = auxv
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    MmParams {
        start_code: stat.field(26),
        end_code: stat.field(27),
        start_stack: stat.field(28),
        start_data: stat.field(45),
        end_data: stat.field(46),
        start_brk: stat.field(47),
        arg_start: stat.field(48),
        arg_end: stat.field(49),
        env_start: stat.field(50),
        env_end: stat.field(51),
        brk: 0,
        auxv,
    }
}

/// `Key:\tvalue` lines of /proc/PID/status.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

pub fn status_ids(status: &str, key: &str) -> Result<Vec<u32>> {
    let v = status_field(status, key).ok_or_else(|| parse_err("status", key))?;
    v.split_whitespace()
        .map(|t| t.parse().map_err(|_| parse_err("status id", t)))
        .collect()
}

/// `pos:` and `flags:` (octal) of /proc/PID/fdinfo/N.
pub fn parse_fdinfo(text: &str) -> Result<(u64, u32)> {
    let pos = status_field(text, "pos").ok_or_else(|| parse_err("fdinfo", text))?;
    let flags = status_field(text, "flags").ok_or_else(|| parse_err("fdinfo", text))?;
    let pos = pos.parse().map_err(|_| parse_err("fdinfo pos", pos))?;
    let flags = u32::from_str_radix(flags, 8).map_err(|_| parse_err("fdinfo flags", flags))?;
    Ok((pos, flags))
}

/// The PIDs of a process's children (from every thread's `children` file).
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in threads(pid)? {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).unwrap_or_default();
        for t in text.split_whitespace() {
            if let Ok(c) = t.parse() {
                out.push(c);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub fn threads(pid: i32) -> Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&dir).map_err(|_| ChkptError::NoSuchProcess(pid))?;
    let mut out: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// RLIMIT_* resources in the order of /proc/PID/limits.
pub fn parse_limits(text: &str) -> Vec<Rlimit> {
    // The kernel prints the limits in resource-number order, after one header line.
    let mut out = Vec::new();
    for (i, line) in text.lines().skip(1).enumerate() {
        // columns are fixed width: name 26 chars, soft 21, hard 21
        let soft = line.get(26..47).unwrap_or("").trim();
        let hard = line.get(47..68).unwrap_or("").trim();
        let conv = |s: &str| {
            if s == "unlimited" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        };
        if let (Some(cur), Some(max)) = (conv(soft), conv(hard)) {
            out.push(Rlimit {
                resource: i as u32,
                cur,
                max,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_line() {
        let m = parse_maps("7f00-7f10 r-xp 00001000 08:01 1234    /usr/lib/x y.so\n7ff0-8000 rw-p 00000000 00:00 0 \n").unwrap();
        assert_eq!(m[0].path, "/usr/lib/x y.so");
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[0].prot(), (libc::PROT_READ | libc::PROT_EXEC) as u32);
        assert_eq!(m[1].path, "");
        assert!(parse_maps("garbage").is_err());
    }

    #[test]
    fn stat_with_spaces_in_comm() {
        let s = parse_stat("12 (a) b) S 1 12 12 0 -1 4194304").unwrap();
        assert_eq!(s.comm, "a) b");
        assert_eq!(s.ppid(), 1);
    }

    #[test]
    fn self_limits_and_fdinfo() {
        let l = parse_limits(&std::fs::read_to_string("/proc/self/limits").unwrap());
        assert_eq!(l.len(), 16);
        let (_, flags) = parse_fdinfo("pos:\t5\nflags:\t02100002\nmnt_id:\t1\n").unwrap();
        assert_eq!(flags, 0o2100002);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,200}") {
            let _ = parse_maps(&text);
            let _ = parse_stat(&text);
            let _ = parse_fdinfo(&text);
            let _ = parse_limits(&text);
        }
    }
}
