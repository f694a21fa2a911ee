//! Validation of rendered files by the daemons' own checkers:
//! `dhcpd -t -cf FILE` (isc-dhcp-server) and `dnsmasq --test --conf-file=FILE`.

use std::path::Path;
use std::process::Command;

use crate::error::{NfsrootError, Result};
use crate::render::{DhcpServer, FileRole, Plan};
use crate::tools::find_tool;

/// Run the checker of `kind` on `file`; Ok holds the checker's own words.
pub fn dhcp_config(kind: DhcpServer, file: &Path) -> Result<String> {
    let (tool, mut cmd) = match kind {
        DhcpServer::Isc => {
            let mut c = Command::new(find_tool("dhcpd")?);
            // -4: the file is IPv4; -t: test the syntax only, do not run.
            c.arg("-4").arg("-t").arg("-cf").arg(file);
            ("dhcpd", c)
        }
        DhcpServer::Dnsmasq => {
            let mut c = Command::new(find_tool("dnsmasq")?);
            c.arg("--test")
                .arg(format!("--conf-file={}", file.display()));
            ("dnsmasq", c)
        }
    };
    let out = cmd.output().map_err(|e| NfsrootError::Tool {
        tool: tool.into(),
        message: e.to_string(),
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text.trim().to_string())
    } else {
        Err(NfsrootError::Tool {
            tool: format!("{tool} on {}", file.display()),
            message: significant_lines(&text),
        })
    }
}

/// dhcpd prints a banner before the error; keep the lines that matter.
fn significant_lines(text: &str) -> String {
    let skip = [
        "Internet Systems Consortium",
        "Copyright",
        "All rights reserved",
        "For info, please visit",
        "Config file:",
        "Database file:",
        "PID file:",
    ];
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !skip.iter().any(|s| l.contains(s)))
        .collect();
    lines.join(" | ")
}

/// Check a GRUB menu with `grub-script-check` (Debian grub-common).
/// Ok(false) when the checker is not installed.
pub fn grub_menu(file: &Path) -> Result<bool> {
    let Ok(exe) = find_tool("grub-script-check") else {
        return Ok(false);
    };
    let out = Command::new(exe)
        .arg(file)
        .output()
        .map_err(|e| NfsrootError::Tool {
            tool: "grub-script-check".into(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(true);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(NfsrootError::Tool {
        tool: format!("grub-script-check on {}", file.display()),
        message: significant_lines(&text),
    })
}

/// What `nfsroot check` found in a rendered tree, one line each.
pub struct TreeReport {
    pub lines: Vec<String>,
}

/// Run the daemons' own checkers on the files of `plan` that have one: the
/// DHCP configuration (required: a render must have written it) and the
/// GRUB menus (when grub-script-check is installed). Paths come from the
/// plan, so this never repeats where render puts things.
pub fn rendered_tree(plan: &Plan) -> Result<TreeReport> {
    let mut lines = Vec::new();
    let mut menus = Vec::new();
    for f in &plan.files {
        match f.role {
            FileRole::Dhcp(kind) => {
                if !f.path.is_file() {
                    return Err(NfsrootError::Tool {
                        tool: "nfsroot check".into(),
                        message: format!(
                            "{} is missing: run `nfsroot render` first",
                            f.path.display()
                        ),
                    });
                }
                dhcp_config(kind, &f.path)?;
                let by = match kind {
                    DhcpServer::Isc => "dhcpd -t",
                    DhcpServer::Dnsmasq => "dnsmasq --test",
                };
                lines.push(format!("{}: accepted by {by}", f.path.display()));
            }
            FileRole::GrubMenu => menus.push(&f.path),
            FileRole::Other => {}
        }
    }
    let mut checked = 0;
    for m in &menus {
        if m.is_file() && grub_menu(m)? {
            checked += 1;
        }
    }
    if checked > 0 {
        lines.push(format!(
            "{checked} GRUB menus accepted by grub-script-check"
        ));
    } else if !menus.is_empty() {
        lines.push("note: grub-script-check is not installed (apt-get install grub-common): GRUB menus not checked".into());
    }
    Ok(TreeReport { lines })
}
