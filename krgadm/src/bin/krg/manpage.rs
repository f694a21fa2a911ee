//! The hand-written part of krg(1) (`krg --generate man`).

use krg_clidoc::{Page, Section};

pub const PAGE: Page = Page {
    section: "1",
    sections: &[
        Section {
            title: "EXIT STATUS",
            body: "\
krg run exits with the job's exit status, or 128 plus the number of the signal that ended it; with several nodes, the highest of them.
255: krg itself failed (no krgd answering, a node that failed or whose krgd died, a refused job); one line on standard error says why.
2: bad usage (an unknown flag or subcommand).
The other commands exit 0 on success and 255 on failure.",
        },
        Section {
            title: "ENVIRONMENT",
            body: "KRG_SOCKET: the admin socket of the krgd to talk to (as --socket).",
        },
        Section {
            title: "FILES",
            body: "/run/krg/krgd.sock: the local krgd's admin socket.
/krg: the same service as files (nodes, XCPU sessions, processes), served by krgd.",
        },
        Section {
            title: "EXAMPLES",
            body: "  krg run -n 3 -- hostname
  krg run -a -b -- uname -r
  krg run --push -n 5 -- ./a.out
  krg ps -n 2-4 -u alice --json
  krg kill -TERM 3:4242
  krg push ./input.dat /scratch/ -a
  krg get /var/log/app.log ./logs/ -n 1-8",
        },
        Section {
            title: "SEE ALSO",
            body: "krgadm(8), krgd(8), krg-init(8)",
        },
    ],
};
