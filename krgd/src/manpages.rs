//! The man pages krgd serves with `krgd --generate KIND`: krgd(8) from its
//! flags, krgd.toml(5) from the same clap definition (every flag is a key),
//! and the hand-written plugins.conf(5) and krg-init(8).

use clap::CommandFactory;
use krg_clidoc::{render_hand_page, Page, Section};

use crate::config::Settings;

/// krgd(8): the hand-written part.
pub const PAGE: Page = Page {
    section: "8",
    sections: &[
        Section {
            title: "FILES",
            body: "\
/etc/krg/krgd.toml: the configuration file, see krgd.toml(5).
/etc/krg/cluster.key: the shared cluster key, identical on every node, mode 0600.
/etc/krg/plugins.conf: external probes, filters and policies, see plugins.conf(5).
/run/krg/krgd.sock: the admin socket krgadm, krg, checkpoint and mount.kdfs talk to.
/var/lib/krg/raft/: the node's Raft log, vote and snapshot.
/config/krg_scheduler: the scheduler tree (FUSE).
/krg: nodes, XCPU sessions and the process table as files (FUSE).
http://127.0.0.1:7690/metrics: Prometheus metrics; / is the status page.",
        },
        Section {
            title: "EXIT STATUS",
            body: "\
0: stopped by SIGTERM or SIGINT.
1: a start-up or run-time failure (a socket taken, an unreadable key, the node id used by another krgd).
2: a bad flag or configuration; the message names the key.",
        },
        Section {
            title: "EXAMPLES",
            body: "  head -c 32 /dev/urandom | base64 > /etc/krg/cluster.key; chmod 600 /etc/krg/cluster.key
  krgd --node-id 1 --session-id 7 --listen 10.0.0.11:7600
  krgd --config /etc/krg/krgd.toml
  krgd --node-id 2 --session-id 7 --http-listen 0.0.0.0:7690 --http-token-file /etc/krg/http.token",
        },
        Section {
            title: "SEE ALSO",
            body: "krgadm(8), krg(1), krgd.toml(5), plugins.conf(5), krg-init(8), mount.kdfs(8), checkpoint(1)",
        },
    ],
};

/// The extra documents of `krgd --generate`.
pub const EXTRA: &[krg_clidoc::Extra] = &[
    ("krgd.toml", krgd_toml),
    ("plugins.conf", plugins_conf),
    ("krg-init", krg_init),
];

/// A config-file key of a flag, and the TOML table it lives in.
pub fn key_of(long: &str) -> (Option<&'static str>, String) {
    match long {
        "peer" => (None, "peers".to_string()),
        l => match l.strip_prefix("run-") {
            Some(rest) => (Some("run"), rest.replace('-', "_")),
            None => (None, l.replace('-', "_")),
        },
    }
}

/// Every (table, key, value name, help) of the config file, from the flags.
pub fn config_keys() -> Vec<(Option<&'static str>, String, String, String)> {
    Settings::command()
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "config" | "help" | "version"))
        .filter_map(|a| {
            let (table, key) = key_of(a.get_long()?);
            let value = if a.get_action().takes_values() {
                a.get_value_names()
                    .and_then(|v| v.first().map(|n| n.to_string()))
                    .unwrap_or_else(|| "VALUE".to_string())
            } else {
                "BOOL".to_string()
            };
            let help = a
                .get_long_help()
                .or(a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            Some((table, key, value, help))
        })
        .collect()
}

/// krgd.toml(5), generated from krgd's flags.
fn krgd_toml() -> String {
    let mut keys = String::new();
    let mut run = String::new();
    for (table, key, value, help) in config_keys() {
        let help = help.replace('\n', " ");
        let line = format!("{key} = {value}: {help}\n");
        match table {
            Some(_) => run.push_str(&line),
            None => keys.push_str(&line),
        }
    }
    render_hand_page(
        "krgd.toml",
        "5",
        "configuration file of krgd, the krg node daemon",
        &[
            Section {
                title: "DESCRIPTION",
                body: "\
krgd reads /etc/krg/krgd.toml (or the file given with --config) at start-up. It is TOML. Every key is also a flag of krgd(8), named with '-' for '_' (node_id is --node-id); a flag overrides the key. Unknown keys are an error, so that a typo never silently becomes a default. node_id and session_id may be left out: krgd then reads node_id=N and session_id=S from the kernel command line, as diskless nodes boot.",
            },
            Section {
                title: "KEYS",
                body: &keys,
            },
            Section {
                title: "THE [run] TABLE",
                body: &run,
            },
            Section {
                title: "EXAMPLE",
                body: "  node_id = 1
  session_id = 7
  listen = \"10.0.0.11:7600\"
  peers = [\"10.0.0.12:7600\", \"10.0.0.13:7600\"]
  http_listen = \"127.0.0.1:7690\"
  [run]
  allow_root = false",
            },
            Section {
                title: "FILES",
                body: "\
/etc/krg/krgd.toml: this file; the package installs a commented example.",
            },
            Section {
                title: "SEE ALSO",
                body: "krgd(8), plugins.conf(5)",
            },
        ],
    )
}

/// plugins.conf(5), written by hand: the registry's format lives in
/// plugpropol's parser, not in a clap definition.
fn plugins_conf() -> String {
    render_hand_page(
        "plugins.conf",
        "5",
        "registry of external krg probes, filters and policies",
        &[
            Section {
                title: "DESCRIPTION",
                body: "\
krgd reads /etc/krg/plugins.conf (key plugin_registry of krgd.toml(5)) at every mkdir in the scheduler tree, so plug-ins are added without restarting krgd. One plug-in per line; '#' starts a comment; bad lines are logged and skipped:

  NAME probe  /absolute/path/to/executable [ARGUMENTS...]
  NAME filter /absolute/path/to/executable [ARGUMENTS...]
  NAME policy /absolute/path/to/executable [ARGUMENTS...]

mkdir /config/krg_scheduler/probes/NAME starts the executable (filters/NAME and schedulers/S/NAME for the other kinds); rmdir stops it. It speaks a line protocol on its standard input and output, described in docs/scheduler.md.",
            },
            Section {
                title: "SECURITY",
                body: "\
krgd runs plug-ins as root, so the registry and every executable it names must be regular files owned by root and not writable by group or others, and every directory on their resolved paths must be owned by root and not writable by group or others unless sticky. A registry that fails these checks is refused whole (mkdir of a plug-in answers EACCES, the reason is in krgd's log); a missing registry is an empty one.",
            },
            Section {
                title: "EXAMPLE",
                body: "  # disk usage of / as a probe
  disk_probe probe /usr/local/lib/krg/plugins/disk_probe.sh /",
            },
            Section {
                title: "SEE ALSO",
                body: "krgd(8), krgd.toml(5)",
            },
        ],
    )
}

/// krg-init(8), written by hand: krg-init takes no flags.
fn krg_init() -> String {
    render_hand_page(
        "krg-init",
        "8",
        "PID 1 of every job started by krg run",
        &[
            Section {
                title: "SYNOPSIS",
                body: "krg-init is started by krgd only; it takes no arguments.",
            },
            Section {
                title: "DESCRIPTION",
                body: "\
krgd starts every job of krg(1) run, XCPU session and krg push/get copy in a PID namespace of its own with krg-init as its PID 1. krg-init first gives the job a mount namespace of its own (a copy of krgd's, every mount made a slave) with a /proc of the job's PID namespace mounted over /proc, so that /proc/$$ and ps inside the job show the job's processes. It blocks every signal and forwards each one it receives to the job's process group, reaps what is reparented to it, and exits as soon as the job's program ends. Its child takes the job's credentials before it enters the working directory or opens anything. For krg push, the child opens the destination as the user and hands the open file to krgd over the job's standard input (a socket), then waits for krgd to report how the writes ended and exits 0, or 1 with the error on its standard error; krgd writes only regular files of local file systems (tmpfs, ext2-4, xfs, btrfs) and does so with the user's file-system ids and no capabilities; the child copies any other destination itself. krgd finds krg-init next to its own executable unless [run] init of krgd.toml(5) names another; it must be owned by root and writable by root only.\n\nkrgd starts one more krg-init, the zygote, in its own PID namespace: it forks the init of every job (which then goes on as above) so that no job pays for executing and linking krg-init. The zygote holds nothing of any job and ends with krgd; if it dies, krgd starts another, and if none can be started, krgd executes krg-init for each job instead. After an upgrade of krg-init, restart krgd to use the new one.",
            },
            Section {
                title: "EXIT STATUS",
                body: "The job's exit status, or 128 plus the signal that ended it; 1 when the job could not be started (the failed step reaches krgd).",
            },
            Section {
                title: "SEE ALSO",
                body: "krgd(8), krg(1)",
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Every key krgd.toml(5) documents is one the config parser takes
    /// (it denies unknown keys), with a value of the documented kind.
    #[test]
    fn every_documented_key_is_accepted_by_the_parser() {
        let keys = config_keys();
        assert!(keys.len() >= 15, "too few keys: {keys:?}");
        for (table, key, value, _) in keys {
            let sample = match value.as_str() {
                "BOOL" => "true".to_string(),
                "ADDR:PORT" if key == "peers" => "[\"127.0.0.1:1\"]".to_string(),
                "ADDR:PORT" => "\"127.0.0.1:1\"".to_string(),
                "ADDR" => "\"10.0.0.255\"".to_string(),
                "N" | "S" | "MS" | "PORT" => "3".to_string(),
                _ => "\"/x\"".to_string(),
            };
            let text = match table {
                Some(t) => format!("[{t}]\n{key} = {sample}\n"),
                None => format!("{key} = {sample}\n"),
            };
            if let Err(e) = toml::from_str::<Settings>(&text) {
                panic!("documented key {key} ({value}) refused: {e}\n{text}");
            }
        }
    }

    #[test]
    fn krgd_toml_page_lists_keys_and_run_table() {
        let page = krgd_toml();
        assert!(page.starts_with(".ie") || page.contains(".TH KRGD.TOML 5"));
        for key in [
            "node_id",
            "session_id",
            "peers",
            "heartbeat_ms",
            "allow_root",
        ] {
            assert!(page.contains(key), "krgd.toml(5) lacks {key}");
        }
    }
}
