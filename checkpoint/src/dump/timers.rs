//! POSIX timers (`timer_create`) of a frozen process: each one's id,
//! clock and notification from /proc/PID/timers, and what it has left
//! (`timer_gettime`, injected). Restore makes them again with the same
//! ids ([`restore::timers`](crate::restore)).

use crate::error::{ChkptError, Result};
use crate::image::PosixTimer;
use crate::procfs;
use crate::ptrace::Injector;

/// `sigev_notify` values.
pub const SIGEV_SIGNAL: i32 = 0;
pub const SIGEV_NONE: i32 = 1;
pub const SIGEV_THREAD_ID: i32 = 4;

/// One entry of /proc/PID/timers before its times are read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: i32,
    signo: i32,
    value: u64,
    notify: i32,
    /// The target's id (a process for SIGEV_SIGNAL, a thread for
    /// SIGEV_THREAD_ID) as this /proc shows it.
    target: i32,
    clock: i32,
}

/// The POSIX timers of `pid`, whose thread ids are `tids` (leader first).
pub fn read(pid: i32, tids: &[i32], inj: &Injector, scratch: u64) -> Result<Vec<PosixTimer>> {
    let text = procfs::read_to_string(format!("/proc/{pid}/timers"))?;
    let entries = parse(&text)
        .map_err(|why| ChkptError::Inconsistent(format!("/proc/{pid}/timers: {why}")))?;
    let mut out = Vec::new();
    for e in entries {
        let refuse = |why: &str| {
            Err(ChkptError::unsupported(
                pid,
                format!("POSIX timer {}", e.id),
                why.to_string(),
            ))
        };
        if e.clock < 0 {
            return refuse("its clock is another process's CPU clock");
        }
        let thread = match e.notify {
            SIGEV_SIGNAL | SIGEV_NONE => 0,
            SIGEV_THREAD_ID => match tids.iter().position(|&t| t == e.target) {
                Some(i) => i as u32,
                None => return refuse("it signals a thread of another process"),
            },
            _ => return refuse("its notification is not saved by this version"),
        };
        inj.call(
            "timer_gettime",
            libc::SYS_timer_gettime,
            [e.id as u64, scratch, 0, 0, 0, 0],
        )?;
        let b = crate::ptrace::read_mem(pid, scratch, 32)?;
        let w = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            i64::from_le_bytes(a)
        };
        let ns = |sec: i64, nsec: i64| (sec.max(0) as u64) * 1_000_000_000 + nsec.max(0) as u64;
        out.push(PosixTimer {
            id: e.id,
            clock: e.clock,
            notify: e.notify,
            signo: e.signo,
            value: e.value,
            thread,
            interval_ns: ns(w(0), w(1)),
            next_ns: ns(w(2), w(3)),
        });
    }
    Ok(out)
}

/// Parse /proc/PID/timers: blocks of `ID:`, `signal: N/VALUE`,
/// `notify: KIND/pid.N` (or `tid.N`), `ClockID:` lines.
fn parse(text: &str) -> std::result::Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut cur: Option<Entry> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, val) = line
            .split_once(':')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        if key == "ID" {
            out.extend(cur.take());
            cur = Some(Entry {
                id: val.parse().map_err(|_| format!("bad id {val:?}"))?,
                signo: 0,
                value: 0,
                notify: SIGEV_SIGNAL,
                target: 0,
                clock: 0,
            });
            continue;
        }
        let e = cur.as_mut().ok_or_else(|| format!("{key} before any ID"))?;
        match key {
            "signal" => {
                let (n, v) = val.split_once('/').ok_or("bad signal line")?;
                e.signo = n.parse().map_err(|_| format!("bad signal {n:?}"))?;
                let v = v.trim_start_matches("0x");
                e.value = u64::from_str_radix(v, 16).map_err(|_| format!("bad value {v:?}"))?;
            }
            "notify" => {
                let (kind, who) = val.split_once('/').ok_or("bad notify line")?;
                let (scope, id) = who.split_once('.').ok_or("bad notify target")?;
                e.target = id.parse().map_err(|_| format!("bad target {id:?}"))?;
                e.notify = match (kind, scope) {
                    ("signal", "pid") => SIGEV_SIGNAL,
                    ("signal", "tid") => SIGEV_THREAD_ID,
                    ("none", _) => SIGEV_NONE,
                    // SIGEV_THREAD is done by libc with SIGEV_THREAD_ID:
                    // the kernel never shows it; anything else is new
                    _ => -1,
                };
            }
            "ClockID" => e.clock = val.parse().map_err(|_| format!("bad clock {val:?}"))?,
            _ => {}
        }
    }
    out.extend(cur);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers_parsed() {
        let text = "ID: 0\nsignal: 10/0000000000001234\nnotify: signal/pid.4242\nClockID: 1\n\
                    ID: 1\nsignal: 14/0000000000000000\nnotify: none/pid.4242\nClockID: 0\n\
                    ID: 7\nsignal: 34/00007f0000000010\nnotify: signal/tid.4244\nClockID: 2\n";
        let e = parse(text).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            Entry {
                id: 0,
                signo: 10,
                value: 0x1234,
                notify: SIGEV_SIGNAL,
                target: 4242,
                clock: 1
            }
        );
        assert_eq!(e[1].notify, SIGEV_NONE);
        assert_eq!(
            (e[2].id, e[2].notify, e[2].target, e[2].clock),
            (7, SIGEV_THREAD_ID, 4244, 2)
        );
        assert_eq!(e[2].value, 0x7f00_0000_0010);
        assert!(parse("signal: 1/0\n").is_err());
        assert!(parse("ID: x\n").is_err());
        assert_eq!(parse("").unwrap(), vec![]);
    }
}
