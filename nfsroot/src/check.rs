//! Validation of rendered files by the daemons' own checkers:
//! `dhcpd -t -cf FILE` (isc-dhcp-server) and `dnsmasq --test --conf-file=FILE`.

use std::path::Path;
use std::process::Command;

use crate::error::{NfsrootError, Result};
use crate::render::DhcpServer;

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

/// Look a daemon binary up on PATH and in the sbin directories, which a
/// non-root PATH often lacks.
pub fn find_tool(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"]);
    for d in dirs {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let pkg = match name {
        "dhcpd" => "isc-dhcp-server",
        "mkfs.btrfs" | "btrfs" => "btrfs-progs",
        other => other,
    };
    Err(NfsrootError::Tool {
        tool: name.into(),
        message: format!("not installed (apt-get install {pkg})"),
    })
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
