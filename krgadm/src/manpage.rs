//! The hand-written part of krgadm(8) (`krgadm --generate man`).

use krg_clidoc::{Page, Section};

pub const PAGE: Page = Page {
    section: "8",
    sections: &[
        Section {
            title: "EXIT STATUS",
            body: "\
0: the request was done (a change: committed cluster-wide).
1: it failed or was refused (unknown node, no quorum, not root, a node checked out by another user, no krgd answering); one line on standard error says why, and nothing was changed.
2: bad usage (an unknown flag or subcommand).",
        },
        Section {
            title: "ENVIRONMENT",
            body: "KRG_SOCKET: the admin socket of the krgd to talk to (as --socket).",
        },
        Section {
            title: "FILES",
            body: "/run/krg/krgd.sock: the local krgd's admin socket.",
        },
        Section {
            title: "EXAMPLES",
            body: "  krgadm cluster start
  krgadm cluster status --json
  krgadm nodes status
  krgadm nodes add -n 3-7
  krgadm nodes add -m 02:6b:72:67:00:03,02:6b:72:67:00:04
  krgadm nodes del -n21:34
  krgadm nodes checkout -n 5-8 --for alice --until +4h --reason benchmark
  krgadm nodes release -n 5-8
  krgadm sched place",
        },
        Section {
            title: "SEE ALSO",
            body: "krgd(8), krg(1), krgd.toml(5)",
        },
    ],
};
