//! What each entry of the /krg tree is, and its inode number. Numbers are
//! handed out on first sight and never reused while the tree is mounted;
//! whether an entry still exists is asked again at every lookup.

use std::collections::HashMap;

use krg_proto::NodeId;

/// A file of `nodes/<id>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeFile {
    /// online, failed, ...
    State,
    /// Where its krgd listens.
    Address,
    /// MAC address.
    Mac,
    /// Load averages.
    Load,
    /// Available memory, bytes.
    MemFree,
    /// Seconds since boot.
    Uptime,
    /// Machine.
    Arch,
    /// uname -a.
    Uname,
}

/// A file of an XCPU session directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessFile {
    /// Arguments (write).
    Argv,
    /// Environment (write).
    Env,
    /// Working directory (write).
    Cwd,
    /// Executable image (write once).
    Exec,
    /// Commands (write), session number (read).
    Ctl,
    /// Input (write).
    Stdin,
    /// Output (read, blocking).
    Stdout,
    /// Errors (read, blocking).
    Stderr,
    /// State (read).
    Status,
    /// Exit status (read, blocks until the end).
    Wait,
    /// PID as the job sees it (read).
    Pid,
}

/// A file of `proc/<node>:<pid>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcFile {
    /// Command line.
    Cmdline,
    /// Named fields.
    Status,
    /// One line of numbers.
    Stat,
    /// Write a signal.
    Signal,
}

/// An entry of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// `/`.
    Root,
    /// `nodes/`.
    Nodes,
    /// `proc/`.
    Procs,
    /// `nodes/<id>/`.
    Node(NodeId),
    /// `nodes/<id>/<file>`.
    NodeFile(NodeId, NodeFile),
    /// `nodes/<id>/xcpu/`.
    Xcpu(NodeId),
    /// `nodes/<id>/xcpu/clone`.
    Clone(NodeId),
    /// `nodes/<id>/xcpu/<n>/`.
    Session(NodeId, u64),
    /// `nodes/<id>/xcpu/<n>/<file>`.
    SessFile(NodeId, u64, SessFile),
    /// `proc/<node>:<pid>/`.
    Proc(NodeId, i32),
    /// `proc/<node>:<pid>/<file>`.
    ProcFile(NodeId, i32, ProcFile),
}

macro_rules! names {
    ($t:ty { $($v:ident = $n:literal),* $(,)? }) => {
        impl $t {
            /// Every file, in listing order.
            pub const ALL: &'static [$t] = &[$(<$t>::$v),*];
            /// Its name.
            pub fn name(self) -> &'static str {
                match self { $(<$t>::$v => $n),* }
            }
            /// The file called `name`.
            pub fn from_name(name: &str) -> Option<$t> {
                match name { $($n => Some(<$t>::$v),)* _ => None }
            }
        }
    };
}

names!(NodeFile { State = "state", Address = "address", Mac = "mac", Load = "load", MemFree = "mem_free", Uptime = "uptime", Arch = "arch", Uname = "uname" });
names!(SessFile { Argv = "argv", Env = "env", Cwd = "cwd", Exec = "exec", Ctl = "ctl", Stdin = "stdin", Stdout = "stdout", Stderr = "stderr", Status = "status", Wait = "wait", Pid = "pid" });
names!(ProcFile { Cmdline = "cmdline", Status = "status", Stat = "stat", Signal = "signal" });

/// Inode numbers of entries (1 is the root, as FUSE wants).
pub struct Inodes {
    by_ino: HashMap<u64, Entry>,
    by_entry: HashMap<Entry, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut i = Inodes {
            by_ino: HashMap::new(),
            by_entry: HashMap::new(),
            next: 1,
        };
        i.ino(Entry::Root);
        i
    }
}

impl Inodes {
    /// The number of `e`, given one if it has none yet.
    pub fn ino(&mut self, e: Entry) -> u64 {
        if let Some(i) = self.by_entry.get(&e) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.by_entry.insert(e, i);
        self.by_ino.insert(i, e);
        i
    }

    /// The entry numbered `ino`.
    pub fn entry(&self, ino: u64) -> Option<Entry> {
        self.by_ino.get(&ino).copied()
    }

    /// Forget every entry of session `n` of `node` (it vanished).
    pub fn forget_session(&mut self, node: NodeId, n: u64) {
        let gone: Vec<Entry> = self
            .by_entry
            .keys()
            .filter(|e| matches!(e, Entry::Session(a, b) | Entry::SessFile(a, b, _) if *a == node && *b == n))
            .copied()
            .collect();
        for e in gone {
            if let Some(i) = self.by_entry.remove(&e) {
                self.by_ino.remove(&i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_names_roundtrip() {
        let mut i = Inodes::default();
        assert_eq!(i.ino(Entry::Root), 1);
        let a = i.ino(Entry::Node(3));
        assert_eq!(i.ino(Entry::Node(3)), a);
        assert_eq!(i.entry(a), Some(Entry::Node(3)));
        for f in SessFile::ALL {
            assert_eq!(SessFile::from_name(f.name()), Some(*f));
        }
        let s = i.ino(Entry::SessFile(3, 7, SessFile::Ctl));
        i.forget_session(3, 7);
        assert_eq!(i.entry(s), None);
        assert_ne!(i.ino(Entry::SessFile(3, 7, SessFile::Ctl)), s);
    }
}
