//! The hand-written part of nfsroot(8) (`nfsroot --generate man`).

use krg_clidoc::{Page, Section};

pub const PAGE: Page = Page {
    section: "8",
    sections: &[
        Section {
            title: "EXIT STATUS",
            body: "\
0: done (check: the description and rendered files are consistent and up to date).
1: a failure or an inconsistency; one line on standard error says what.
2: bad usage.",
        },
        Section {
            title: "EXAMPLES",
            body: "  nfsroot init cluster.toml
  nfsroot render cluster.toml --out /srv/krg
  nfsroot check cluster.toml --out /srv/krg
  nfsroot image build base --suite bookworm --krg-bin-dir /usr/sbin
  nfsroot serve cluster.toml --out /srv/krg",
        },
        Section {
            title: "SEE ALSO",
            body: "krgd(8), krgd.toml(5), dnsmasq(8), dhcpd(8)",
        },
    ],
};
