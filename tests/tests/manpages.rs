//! Man pages and shell completions of every installed binary, as a user
//! meets them: `PROG --generate man` rendered by man(1), every subcommand
//! that `--help` lists (at every depth) present on the page, hand-written
//! FILES / EXIT STATUS sections there, and completions that bash really
//! completes with (zsh: the script parses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use krg_tests::bin;

/// (binary file, name on the page, section) of every binary the package installs.
const BINARIES: &[(&str, &str, &str)] = &[
    ("krgd", "krgd", "8"),
    ("krgadm", "krgadm", "8"),
    ("krg", "krg", "1"),
    ("checkpoint", "checkpoint", "1"),
    ("restart", "restart", "1"),
    ("migrate", "migrate", "1"),
    ("krgcapset", "krgcapset", "1"),
    ("mkfs-kdfs", "mkfs.kdfs", "8"),
    ("fsck-kdfs", "fsck.kdfs", "8"),
    ("mount-kdfs", "mount.kdfs", "8"),
    ("kdfsctl", "kdfsctl", "8"),
    ("nfsroot", "nfsroot", "8"),
];

fn built(file: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let mut cmd = krg_tests::cargo_build(&["krgd", "krgadm", "checkpoint", "kdfs", "nfsroot"]);
        assert!(cmd.status().unwrap().success(), "cargo build failed");
    });
    bin(file)
}

fn generate(file: &str, kind: &str) -> String {
    let out = Command::new(built(file))
        .args(["--generate", kind])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{file} --generate {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The page as man(1) shows it, one paragraph per line.
fn render(roff: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.man");
    std::fs::write(&page, roff).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANWIDTH", "400")
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C.UTF-8")
        .stderr(Stdio::piped())
        .output()
        .expect("man(1) runs (Debian package man-db)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "man -l: {err}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every subcommand path `--help` lists, at every depth ("nodes add").
fn subcommands(file: &str, path: &[String]) -> Vec<Vec<String>> {
    let out = Command::new(built(file))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let mut found = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.trim_end() == "Commands:" {
            in_commands = true;
        } else if in_commands && line.trim().is_empty() {
            break;
        } else if in_commands && line.starts_with("  ") && !line.starts_with("   ") {
            let name = line.split_whitespace().next().unwrap().to_string();
            if name != "help" {
                let mut sub = path.to_vec();
                sub.push(name);
                found.push(sub.clone());
                found.extend(subcommands(file, &sub));
            }
        }
    }
    found
}

#[test]
fn every_binary_has_a_man_page_with_every_subcommand() {
    let mut commands_seen = 0;
    for (file, name, section) in BINARIES {
        let roff = generate(file, "man");
        let title = format!(".TH {} {section} ", name.to_uppercase());
        assert!(roff.contains(&title), "{file}: no `{title}` in\n{roff}");
        let text = render(&roff);
        for heading in ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"] {
            assert!(
                text.lines().any(|l| l.trim_end() == heading),
                "{file}: man page lacks {heading}:\n{text}"
            );
        }
        assert!(text.contains("--version"), "{file}: options missing");
        for sub in subcommands(file, &[]) {
            let shown = format!("{name} {}", sub.join(" "));
            assert!(
                text.lines().any(|l| l.trim() == shown),
                "{file}: man page lacks the subcommand `{shown}`:\n{text}"
            );
            commands_seen += 1;
        }
    }
    // krgadm (3 + 8), krg (5), checkpoint (inspect, rm), nfsroot (many).
    assert!(commands_seen >= 25, "only {commands_seen} subcommands seen");
}

#[test]
fn krgd_serves_its_file_and_helper_pages() {
    for (kind, title, must) in [
        (
            "krgd.toml",
            ".TH KRGD.TOML 5",
            ["failure_timeout_ms", "[run]"],
        ),
        ("plugins.conf", ".TH PLUGINS.CONF 5", ["probe", "policy"]),
        (
            "krg-init",
            ".TH KRG-INIT 8",
            ["PID namespace", "EXIT STATUS"],
        ),
    ] {
        let roff = generate("krgd", kind);
        assert!(roff.contains(title), "{kind}: {roff}");
        let text = render(&roff);
        for m in must {
            assert!(text.contains(m), "{kind} page lacks {m}:\n{text}");
        }
    }
}

#[test]
fn a_bad_kind_is_one_line_and_exit_2() {
    let out = Command::new(built("krgadm"))
        .args(["--generate", "troff"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("krgadm: --generate troff: unknown kind"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// What bash's completion function offers after `words` (the last one being
/// completed), with the script `PROG --generate bash` prints.
fn bash_complete(file: &str, name: &str, words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("completion.bash");
    std::fs::write(&script, generate(file, "bash")).unwrap();
    let words_q: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let func = format!("_{}", name.replace('.', "__"));
    let prog = format!(
        "source {}; COMP_WORDS=({name} {}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
         {func} {name} '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words_q.join(" "),
        words.len(),
        words.last().unwrap_or(&""),
        if words.len() > 1 { words[words.len() - 2] } else { name },
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &prog])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let top = bash_complete("krgadm", "krgadm", &[""]);
    for want in ["cluster", "nodes", "sched"] {
        assert!(top.contains(&want.to_string()), "krgadm <TAB>: {top:?}");
    }
    let nodes = bash_complete("krgadm", "krgadm", &["nodes", ""]);
    for want in ["add", "checkout", "del", "release", "status"] {
        assert!(
            nodes.contains(&want.to_string()),
            "krgadm nodes <TAB>: {nodes:?}"
        );
    }
    let run = bash_complete("krg", "krg", &["run", "--de"]);
    assert_eq!(run, vec!["--detach".to_string()], "krg run --de<TAB>");
    let krgd = bash_complete("krgd", "krgd", &["--failure"]);
    assert_eq!(krgd, vec!["--failure-timeout-ms".to_string()]);
}

#[test]
fn zsh_and_fish_scripts_are_generated_and_zsh_parses_them() {
    for (file, _, _) in BINARIES {
        let zsh = generate(file, "zsh");
        assert!(zsh.starts_with("#compdef "), "{file}: {zsh:.80}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("_completion");
        std::fs::write(&script, &zsh).unwrap();
        let out = Command::new("zsh")
            .arg("-n")
            .arg(&script)
            .output()
            .expect("zsh runs (Debian package zsh)");
        assert!(
            out.status.success(),
            "{file}: zsh -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            generate(file, "fish").contains("complete -c "),
            "{file}: fish"
        );
    }
}
