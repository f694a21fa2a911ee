//! Human-readable forms of an image: `description_v<SN>.txt` and
//! `checkpoint inspect`.

use std::fmt::Write;
use std::path::Path;

use crate::checked_dir::CheckedDir;
use crate::error::Result;
use crate::image::{
    self, FdKind, FileKind, GlobalImage, MmImage, Names, NodeImage, RunData, TaskImage, VmaKind,
    PAGE,
};

fn prot(p: u32) -> String {
    let f = |b: i32, c: char| if p & b as u32 != 0 { c } else { '-' };
    format!(
        "{}{}{}",
        f(libc::PROT_READ, 'r'),
        f(libc::PROT_WRITE, 'w'),
        f(libc::PROT_EXEC, 'x')
    )
}

/// How long the tree was frozen, and where this SN stands in its chain.
/// Where the tree's PIDs live: checkpoint's namespace, or one below it
/// (each PID with its number there).
fn pidns_line(g: &GlobalImage) -> String {
    if g.pidns.is_empty() {
        return "PID namespace: checkpoint's own".into();
    }
    let pairs: Vec<String> = g.pidns.iter().map(|(h, i)| format!("{h}={i}")).collect();
    format!(
        "PID namespace: one of its own (a krg job; restart makes it anew), PIDs there: {}",
        pairs.join(" ")
    )
}

fn chain_line(g: &GlobalImage) -> String {
    let chain = match g.parent {
        Some(p) => format!("incremental: unchanged pages are kept in SN {p}"),
        None => "full: every page is in this SN".into(),
    };
    format!("frozen for {:.1} ms; {chain}", g.frozen_us as f64 / 1000.0)
}

/// Pages saved in this SN's file, pages kept in the parent SN, pages
/// shared with the parent process.
fn page_counts(mm: &MmImage) -> (u64, u64, u64) {
    mm.vmas
        .iter()
        .flat_map(|v| &v.runs)
        .fold((0u64, 0u64, 0u64), |(h, p, c), r| match r.data {
            RunData::Here { .. } => (h.saturating_add(r.pages), p, c),
            RunData::Parent => (h, p.saturating_add(r.pages), c),
            RunData::Cow => (h, p, c.saturating_add(r.pages)),
        })
}

/// ", N page(s) shared with the parent process", when there are some.
fn cow_note(cow: u64) -> String {
    if cow == 0 {
        String::new()
    } else {
        format!(", {cow} page(s) shared with the parent process (copy-on-write)")
    }
}

pub fn description(g: &GlobalImage, n: &NodeImage, tasks: &[(&TaskImage, &MmImage)]) -> String {
    let mut s = String::new();
    let sn = g.sn;
    let _ = writeln!(
        s,
        "krg checkpoint of application {} — SN {} (format version {})",
        g.app_id,
        sn,
        image::FORMAT_VERSION
    );
    let _ = writeln!(
        s,
        "taken at unix time {} on kernel {}, owner uid {}",
        g.created_unix, g.kernel, g.uid
    );
    let _ = writeln!(s, "{}", chain_line(g));
    let _ = writeln!(s, "{}\n", pidns_line(g));
    let _ = writeln!(
        s,
        "global_v{sn}.bin       application id, SN, node mask {:#x}",
        g.node_mask
    );
    let _ = writeln!(
        s,
        "node_{}_v{sn}.bin       {} task(s) held by node {}, {} pipe(s)",
        n.node,
        n.tasks.len(),
        n.node,
        n.pipes.len()
    );
    for (t, mm) in tasks {
        let (here, parent, cow) = page_counts(mm);
        let _ = writeln!(
            s,
            "task_{}_v{sn}.bin      task {} ({}) parent {}: registers+xstate, {} signal handler(s), {} fd(s), cwd {}",
            t.pid, t.pid, t.comm, t.ppid, t.sigactions.len(), t.fds.len(), t.cwd
        );
        let kept = match mm.parent {
            Some(p) => format!(", {parent} unchanged page(s) kept in SN {p}"),
            None => String::new(),
        } + &cow_note(cow);
        let _ = writeln!(
            s,
            "task_mm_{}_v{sn}.bin   {} mapping(s), {} saved page(s) ({} KiB){kept}",
            t.pid,
            mm.vmas.len(),
            here,
            here.saturating_mul(PAGE) / 1024
        );
    }
    s
}

/// One committed SN in the overview of a directory.
#[derive(Debug, serde::Serialize)]
pub struct SnSummary {
    pub sn: u32,
    pub parent: Option<u32>,
    pub frozen_us: u64,
    pub created_unix: u64,
    /// Bytes of its files.
    pub bytes: u64,
}

/// The committed SNs of an application directory.
pub fn chains_json(dir: &Path) -> Result<Vec<SnSummary>> {
    let d = CheckedDir::open(dir)?;
    let mut out = Vec::new();
    for sn in crate::store::committed_sns(&d) {
        let names = Names { sn };
        let g: GlobalImage = image::read_in(&d, &names.global(), FileKind::Global)?
            .0
            .meta;
        let mut bytes = 0;
        for name in d.entries()? {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with('.') && crate::store::sn_of(name) == Some(sn) {
                bytes += d.stat_entry(name).map(|s| s.st_size as u64).unwrap_or(0);
            }
        }
        out.push(SnSummary {
            sn,
            parent: g.parent,
            frozen_us: g.frozen_us,
            created_unix: g.created_unix,
            bytes,
        });
    }
    Ok(out)
}

/// `checkpoint inspect DIR`: every SN, what it builds on, its size.
pub fn chains(dir: &Path) -> Result<String> {
    let sns = chains_json(dir)?;
    let mut s = String::new();
    let _ = writeln!(s, "{}: {} SN(s)", dir.display(), sns.len());
    for x in &sns {
        let mut chain = vec![x.sn];
        let mut at = x.parent;
        while let Some(p) = at {
            chain.push(p);
            at = sns.iter().find(|y| y.sn == p).and_then(|y| y.parent);
        }
        let chain: Vec<String> = chain.iter().map(|c| c.to_string()).collect();
        let _ = writeln!(
            s,
            "  SN {:<4} {:>10.1} MiB  frozen {:>8.1} ms  {}",
            x.sn,
            x.bytes as f64 / (1 << 20) as f64,
            x.frozen_us as f64 / 1000.0,
            match x.parent {
                Some(p) => format!("incremental on SN {p} (chain {})", chain.join(" <- ")),
                None => "full".into(),
            }
        );
    }
    for (node, pid, sns) in crate::partcopy::copies(dir) {
        let sns: Vec<String> = sns.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            s,
            "  part saved by node {node} (PID {pid} there), copied in {}/{node}/{pid}: SN(s) {}",
            crate::partcopy::PARTS_DIR,
            sns.join(", ")
        );
    }
    Ok(s)
}

/// `checkpoint inspect --json DIR SN`: the decoded metadata of every file of
/// one SN (page data left out), for scripts.
pub fn inspect_json(dir: &Path, sn: u32) -> Result<serde_json::Value> {
    let dir = &CheckedDir::open(dir)?;
    let names = Names { sn };
    let g: GlobalImage = image::read_in(dir, &names.global(), FileKind::Global)?
        .0
        .meta;
    let mut nodes = Vec::new();
    for node in image::nodes_here(&g, dir, &names) {
        let n: NodeImage = image::read_in(dir, &names.node(node), FileKind::Node)?
            .0
            .meta;
        let mut tasks = Vec::new();
        for te in n.tasks.iter().filter(|t| t.zombie.is_none()) {
            let t: TaskImage = image::read_in(dir, &names.task(te.pid), FileKind::Task)?
                .0
                .meta;
            let d = image::read_in::<MmImage>(dir, &names.task_mm(te.pid), FileKind::Mm)?.0;
            tasks.push(serde_json::json!({ "task": t, "mm": d.meta, "data_offset": d.data_off, "data_length": d.data_len }));
        }
        nodes.push(serde_json::json!({ "node": n, "tasks": tasks }));
    }
    Ok(serde_json::json!({ "format_version": image::FORMAT_VERSION, "global": g, "nodes": nodes }))
}

/// `checkpoint inspect DIR SN`: every file of one SN, decoded.
pub fn inspect(dir: &Path, sn: u32) -> Result<String> {
    let dir = &CheckedDir::open(dir)?;
    let names = Names { sn };
    let g: GlobalImage = image::read_in(dir, &names.global(), FileKind::Global)?
        .0
        .meta;
    let mut s = String::new();
    let _ = writeln!(s, "{}:", dir.join(&names.global()).display());
    let _ = writeln!(
        s,
        "  app_id {}  sn {}  node_mask {:#x}  uid {}  kernel {}  created {}",
        g.app_id, g.sn, g.node_mask, g.uid, g.kernel, g.created_unix
    );
    let _ = writeln!(s, "  {}", chain_line(&g));
    let _ = writeln!(s, "  {}", pidns_line(&g));
    for node in 0..64u32 {
        if g.node_mask & (1u64 << node) == 0 {
            continue;
        }
        if !dir.contains(&names.node(node)) {
            let _ = writeln!(
                s,
                "node {node}: it saved processes of this SN (stand-ins below), in its own store"
            );
            continue;
        }
        let n: NodeImage = image::read_in(dir, &names.node(node), FileKind::Node)?
            .0
            .meta;
        let _ = writeln!(s, "{}:", dir.join(&names.node(node)).display());
        for m in &n.shared_mem {
            let _ = writeln!(s, "  shared memory object {} of {} bytes", m.id, m.size);
        }
        for m in &n.sysv_shm {
            let _ = writeln!(
                s,
                "  SysV shm {} key {:#x} {} bytes mode {:o} uid {} gid {}{}",
                m.shmid,
                m.key,
                m.size,
                m.mode,
                m.uid,
                m.gid,
                if m.destroyed { " (removed)" } else { "" }
            );
        }
        for m in &n.sysv_sem {
            let _ = writeln!(
                s,
                "  SysV semaphore set {} key {:#x} mode {:o} uid {} values {:?}",
                m.semid, m.key, m.mode, m.uid, m.values
            );
        }
        for m in &n.sysv_msg {
            let _ = writeln!(
                s,
                "  SysV message queue {} key {:#x} mode {:o} uid {} with {} message(s)",
                m.msqid,
                m.key,
                m.mode,
                m.uid,
                m.msgs.len()
            );
        }
        for p in &n.pipes {
            let _ = writeln!(
                s,
                "  pipe ino {} with {} buffered byte(s)",
                p.ino,
                p.data.len()
            );
        }
        for e in &n.sockets {
            let shut = match (e.shutdown.send, e.shutdown.receive) {
                (true, true) => "sends and receives no more",
                (true, false) => "sends no more",
                (false, true) => "receives no more (reads end after its queue)",
                (false, false) => "open both ways",
            };
            let _ = writeln!(
                s,
                "  socket:[{}]: {shut}; {} option(s) beyond a new socket's{}",
                e.sock,
                e.options.len(),
                if e.unlinked {
                    "; its bound path removed"
                } else {
                    ""
                }
            );
        }
        for m in &n.in_flight {
            let _ = writeln!(
                s,
                "  {} file(s) in flight on socket:[{}], queued message {}: {}",
                m.files.len(),
                m.sock,
                m.msg,
                m.files
                    .iter()
                    .map(|f| fd_text(&f.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for te in &n.tasks {
            if let Some(z) = te.zombie {
                let _ = writeln!(
                    s,
                    "  task {} parent {}: a zombie, exit status {:#x}",
                    te.pid, te.ppid, z.status
                );
                continue;
            }
            let _ = writeln!(
                s,
                "  task {} parent {} threads {:?}",
                te.pid, te.ppid, te.threads
            );
            inspect_task(&mut s, dir, &names, te.pid)?;
        }
        for si in &n.stand_ins {
            let p = si.part;
            let copied = crate::partcopy::copies(dir.path())
                .iter()
                .any(|(node, pid, sns)| {
                    (*node, *pid) == (p.node, p.host_pid) && sns.contains(&p.sn)
                });
            let _ = writeln!(
                s,
                "  task {} parent {}: the stand-in of a process on node {} (PID {} there, \
                 saved as SN {} in its /var/chkpt/{}{}), group {} session {}, command {:?}, stdio {}",
                si.pid,
                si.ppid,
                p.node,
                p.host_pid,
                p.sn,
                p.host_pid,
                if copied {
                    format!(", copied in {}/{}/{}", crate::partcopy::PARTS_DIR, p.node, p.host_pid)
                } else {
                    String::new()
                },
                si.pgid,
                si.sid,
                si.argv
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
                si.stdio
                    .iter()
                    .map(|f| format!("{}={}", f.fd, fd_text(&f.kind)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(s)
}

fn inspect_task(s: &mut String, dir: &CheckedDir, names: &Names, pid: i32) -> Result<()> {
    let t: TaskImage = image::read_in(dir, &names.task(pid), FileKind::Task)?
        .0
        .meta;
    let _ = writeln!(s, "{}:", dir.join(&names.task(pid)).display());
    let _ = writeln!(
        s,
        "  comm {:?} exe {} cwd {} umask {:03o}",
        t.comm, t.exe, t.cwd, t.umask
    );
    let _ = writeln!(
        s,
        "  uids {:?} gids {:?} groups {:?}",
        t.uids, t.gids, t.groups
    );
    for th in &t.threads {
        if let Some(r) = image::regs_from_bytes(&th.regs) {
            let _ = writeln!(
                s,
                "  thread {}: rip {:#x} rsp {:#x} rax {:#x} orig_rax {:#x} fs_base {:#x} sigmask {:#x} xstate {} bytes, {} pending",
                th.tid, r.rip, r.rsp, r.rax, r.orig_rax as i64, r.fs_base, th.sigmask, th.xstate.len(), th.pending.len()
            );
        }
    }
    for a in &t.sigactions {
        let _ = writeln!(
            s,
            "  signal {}: handler {:#x} flags {:#x} mask {:#x}",
            a.sig, a.handler, a.flags, a.mask
        );
    }
    for i in &t.itimers {
        let _ = writeln!(
            s,
            "  itimer {}: value {} us interval {} us",
            i.which, i.value_us, i.interval_us
        );
    }
    for f in &t.fds {
        let what = fd_text(&f.kind);
        let _ = writeln!(s, "  fd {}: flags {:o} {}", f.fd, f.flags, what);
    }
    for l in &t.locks {
        let _ = writeln!(
            s,
            "  lock on fd {}: {}",
            l.fd,
            crate::image::describe_lock(&l.lock)
        );
    }
    for r in &t.rlimits {
        let _ = writeln!(
            s,
            "  rlimit {}: cur {} max {}",
            r.resource, r.cur as i64, r.max as i64
        );
    }
    s.push_str(&crate::image::describe_attrs(&t.attrs));
    let d = image::read_in::<MmImage>(dir, &names.task_mm(pid), FileKind::Mm)?.0;
    let mm = d.meta;
    let (here, parent, cow) = page_counts(&mm);
    let _ = writeln!(
        s,
        "{}: data at offset {} ({} bytes, {here} page(s)){}",
        dir.join(&names.task_mm(pid)).display(),
        d.data_off,
        d.data_len,
        match mm.parent {
            Some(p) => format!(", {parent} unchanged page(s) kept in SN {p}"),
            None => String::new(),
        } + &cow_note(cow)
    );
    let p = &mm.params;
    let _ = writeln!(
        s,
        "  code {:#x}-{:#x} data {:#x}-{:#x} brk {:#x}-{:#x} stack {:#x}",
        p.start_code, p.end_code, p.start_data, p.end_data, p.start_brk, p.brk, p.start_stack
    );
    for v in &mm.vmas {
        let pages: u64 = v
            .runs
            .iter()
            .filter(|r| matches!(r.data, RunData::Here { .. }))
            .fold(0u64, |a, r| a.saturating_add(r.pages));
        let kind = match &v.kind {
            VmaKind::File { path, offset, .. } => format!("{path} @{offset:#x}"),
            VmaKind::DeletedFile {
                path,
                offset,
                size,
                content,
                ..
            } => format!(
                "{path} (deleted, {size} bytes{}) @{offset:#x}",
                if content.is_empty() {
                    ""
                } else {
                    " saved here"
                }
            ),
            k => format!("{k:?}"),
        };
        let _ = writeln!(
            s,
            "  {:#014x}-{:#014x} {}{} {:<40} {} page(s) saved in {} run(s)",
            v.start,
            v.end,
            prot(v.prot),
            if v.shared { 's' } else { 'p' },
            kind,
            pages,
            v.runs.len()
        );
    }
    Ok(())
}

/// One fd's file, in words.
fn fd_text(kind: &FdKind) -> String {
    match kind {
        FdKind::Path { path, pos, file } => {
            format!("{path} at offset {pos} (open file #{file})")
        }
        FdKind::InheritedStdio { what } => format!("stdio ({what}), inherited from restart"),
        FdKind::Pipe { ino, write_end } => format!(
            "pipe ino {ino} {} end",
            if *write_end { "write" } else { "read" }
        ),
        FdKind::EventFd {
            file,
            count,
            semaphore,
        } => format!(
            "eventfd count {count}{} (open file #{file})",
            if *semaphore { " semaphore" } else { "" }
        ),
        FdKind::TimerFd {
            file,
            clock,
            ticks,
            value_ns,
            interval_ns,
        } => format!(
            "timerfd clock {clock}, {ticks} tick(s) unread, fires in {value_ns} ns, every {interval_ns} ns (open file #{file})"
        ),
        FdKind::SignalFd { file, mask } => {
            format!("signalfd mask {mask:#x} (open file #{file})")
        }
        FdKind::Epoll { file, items } => format!(
            "epoll watching fds {:?} (open file #{file})",
            items.iter().map(|i| i.tfd).collect::<Vec<_>>()
        ),
        FdKind::Socket { file, sock } => format!(
            "{} (open file #{file})",
            crate::image::describe_socket(sock)
        ),
        FdKind::Pidfd { pid } => format!("pidfd of {pid}"),
        k => crate::image::describe_held(k),
    }
}
