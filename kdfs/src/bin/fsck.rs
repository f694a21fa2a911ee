//! fsck.kdfs DIR...: check (and with -y repair) kDFS stores offline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kdfs::fsck::{run, Options, Report, EXIT_OPERATIONAL};

/// A bad command line (e2fsck's code).
const EXIT_USAGE: u8 = 16;

/// Check the kDFS store DIR (a node's local directory, as made by
/// mkfs.kdfs) and, with -y, repair it: orphan inodes, second names and
/// wrong link counts that a crash between the steps of a cross-node
/// operation leaves, entries and objects the store did not write, the
/// inode counter, the root meta-file.
///
/// The store must not be in use: stop its krgd and unmount it first
/// (fsck.kdfs refuses a store a krgd serves or a mount reads).
///
/// One store alone: an inode with no name in it may be named by another
/// node's directory, so it is only counted. Given every store of the file
/// system at once (their directories, e.g. copies, on one machine),
/// fsck.kdfs also finds orphans (nothing reachable from the root names
/// them), entries naming missing inodes of other nodes, and exact link
/// counts.
///
/// On a cluster whose stores are on their own nodes: stop every krgd, run
/// `fsck.kdfs --export FILE DIR` on each node, copy the files to every
/// node, then `fsck.kdfs -y DIR --with FILE...` on each, with the others'.
///
/// Nothing that may hold data is deleted: orphans, strays and entries the
/// store did not write are moved to DIR/lost+found.
#[derive(Parser, Debug)]
#[command(
    name = "fsck.kdfs",
    version,
    after_help = "Examples:\n  fsck.kdfs /KDFS                      # check only (as -n)\n  fsck.kdfs -y /KDFS                   # check and repair\n  fsck.kdfs -y /srv/n1 /srv/n2 /srv/n3 # every store of a file system: orphans too\n  fsck.kdfs --export /tmp/n2.kx /KDFS  # on node 2 (and likewise on node 3)\n  fsck.kdfs -y --with /tmp/n2.kx --with /tmp/n3.kx /KDFS   # on node 1"
)]
struct Args {
    /// The store(s) to check: one node's, or every node's.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Check only, change nothing (the default).
    #[arg(short = 'n', conflicts_with = "yes")]
    no: bool,
    /// Repair every problem found.
    #[arg(short = 'y')]
    yes: bool,
    /// Repair automatically, as fsck(8) asks with -a or -p: the same as
    /// -y (no repair of fsck.kdfs deletes anything that may hold data).
    #[arg(short = 'p', short_alias = 'a', conflicts_with = "no")]
    preen: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Another node's store as `--export` wrote it (repeat for each):
    /// checked along with DIR, so that orphans and names across nodes are
    /// found without the stores on one machine. Only DIR is repaired.
    #[arg(long, value_name = "FILE")]
    with: Vec<PathBuf>,
    /// Write DIR's store to FILE for the other nodes' runs (`--with`), and
    /// check nothing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["with", "yes", "preen"])]
    export: Option<PathBuf>,
}

fn print(report: &Report, repair: bool) {
    for s in &report.stores {
        println!(
            "{}: node {}, {} inodes, {} names",
            s.path.display(),
            s.node,
            s.objects,
            s.entries
        );
    }
    for f in &report.findings {
        let what = match &f.repaired {
            None => "not repaired (check only: run with -y)".to_string(),
            Some(Ok(how)) => format!("repaired: {how}"),
            Some(Err(why)) => format!("NOT repaired: {why}"),
        };
        println!("  {}: {what}", f.message);
    }
    for n in &report.notes {
        println!("  note: {n}");
    }
    if repair {
        for f in &report.left {
            println!("  still wrong: {}", f.message);
        }
    }
    let verdict = match report.exit_code() {
        0 => "clean".to_string(),
        1 => format!("{} problem(s) repaired", report.findings.len()),
        _ => format!("{} problem(s) left", report.left.len()),
    };
    println!("fsck.kdfs: {verdict}");
}

fn export_to(dirs: &[PathBuf], out: &std::path::Path) -> ExitCode {
    let [dir] = dirs else {
        eprintln!("fsck.kdfs: --export takes one store");
        return ExitCode::from(EXIT_USAGE);
    };
    match kdfs::fsck::export(dir, out) {
        Ok(names) => {
            println!(
                "{}: {names} names exported to {}",
                dir.display(),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fsck.kdfs: {e:#}");
            ExitCode::from(EXIT_OPERATIONAL as u8)
        }
    }
}

fn main() -> ExitCode {
    krg_clidoc::intercept::<Args>(&PAGE);
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            // --help and --version are no errors; a bad command line is 16, as for e2fsck.
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if let Some(out) = &args.export {
        return export_to(&args.dirs, out);
    }
    let opts = Options {
        dirs: args.dirs,
        with: args.with,
        repair: args.yes || args.preen,
    };
    match run(&opts) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("fsck.kdfs: {e}");
                        return ExitCode::from(EXIT_OPERATIONAL as u8);
                    }
                }
            } else {
                print(&report, opts.repair);
            }
            ExitCode::from(report.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("fsck.kdfs: {e:#}");
            ExitCode::from(EXIT_OPERATIONAL as u8)
        }
    }
}

/// The hand-written part of this binary's man page (`--generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "8",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body: "0: no problem found.
1: problems were found and all repaired (-y).
4: problems are left (found with -n, or not repairable).
8: operational error: not a kDFS store, store in use, unreadable; one line says why.
16: bad command line.",
        },
        krg_clidoc::Section {
            title: "FILES",
            body: "DIR/lost+found: where repairs move orphan inodes, stray objects and entries the store did not write.",
        },
        krg_clidoc::Section {
            title: "EXAMPLES",
            body: "  fsck.kdfs /KDFS
  fsck.kdfs -y /KDFS
  fsck.kdfs -y /srv/n1 /srv/n2 /srv/n3
  fsck.kdfs --export /tmp/n2.kx /KDFS
  fsck.kdfs -y --with /tmp/n2.kx --with /tmp/n3.kx /KDFS",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "mkfs.kdfs(8), mount.kdfs(8), krgd(8), e2fsck(8)",
        },
    ],
};
