//! The TFTP tree: per-node boot menus for iPXE and GRUB, each carrying the
//! node's kernel command line (node_id=, session_id=, root=/dev/nfs nfsroot=).
//! Both loaders find a node's menu by its MAC address.

use std::fmt::Write;

use super::Ctx;
use crate::desc::Node;

/// (path relative to the TFTP root, contents) of every menu file.
pub fn files(c: &Ctx) -> Vec<(String, String)> {
    let mut v = vec![
        ("ipxe/boot.ipxe".to_string(), ipxe_dispatch(c)),
        ("grub/grub.cfg".to_string(), grub_dispatch(c)),
    ];
    for n in &c.d.nodes {
        let hyph = c.mac(n).replace(':', "-");
        v.push((format!("ipxe/{hyph}.ipxe"), ipxe_node(c, n)));
        // GRUB >= 2.04 loads grub.cfg-01-<mac> by itself before grub.cfg.
        v.push((format!("grub/grub.cfg-01-{hyph}"), grub_node(c, n)));
    }
    v
}

fn title(c: &Ctx, n: &Node) -> String {
    format!(
        "krg node {} (node_id {}, session {})",
        n.name, n.node_id, c.d.cluster.session_id
    )
}

fn initrd_name<'a>(c: &Ctx<'a>) -> &'a str {
    c.d.boot
        .initrd
        .rsplit('/')
        .next()
        .unwrap_or(&c.d.boot.initrd)
}

/// Loaded by every iPXE client; chains to the menu named after its MAC.
fn ipxe_dispatch(c: &Ctx) -> String {
    let mut s = String::from("#!ipxe\n");
    let _ = writeln!(
        s,
        "# krg session {}: rendered by nfsroot. Each node's menu is ipxe/<mac>.ipxe.",
        c.d.cluster.session_id
    );
    s.push_str("chain --autofree ${mac:hexhyp}.ipxe || goto unknown\n");
    s.push_str(
        ":unknown\necho krg: no boot menu for ${mac}: add this node to the cluster description\n",
    );
    s.push_str("prompt --timeout 30000 Press a key to retry || reboot\nreboot\n");
    s
}

fn ipxe_node(c: &Ctx, n: &Node) -> String {
    let b = &c.d.boot;
    let args = c.cmdline(n);
    let mut s = String::from("#!ipxe\n");
    let _ = writeln!(
        s,
        "# {}: rendered by nfsroot; edit the description and re-render.",
        title(c, n)
    );
    let _ = writeln!(s, "menu {}", title(c, n));
    let _ = writeln!(s, "item krg Boot {}", n.name);
    let _ = writeln!(s, "item rescue Boot {} single-user (rescue)", n.name);
    let _ = writeln!(s, "item shell iPXE shell");
    let _ = writeln!(
        s,
        "choose --default krg --timeout {} target && goto ${{target}}",
        b.timeout * 1000
    );
    for (label, extra) in [("krg", ""), ("rescue", " single")] {
        let _ = writeln!(s, ":{label}");
        let _ = writeln!(
            s,
            "kernel /{} initrd={} {args}{extra}",
            b.kernel,
            initrd_name(c)
        );
        let _ = writeln!(s, "initrd /{}", b.initrd);
        let _ = writeln!(s, "boot");
    }
    s.push_str(":shell\nshell\n");
    s
}

/// Fallback for GRUB builds that do not look up grub.cfg-01-<mac> themselves.
fn grub_dispatch(c: &Ctx) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# krg session {}: rendered by nfsroot. GRUB >= 2.04 loads grub.cfg-01-<mac>",
        c.d.cluster.session_id
    );
    let _ = writeln!(
        s,
        "# before this file; older ones land here and are dispatched by MAC."
    );
    for n in &c.d.nodes {
        let mac = c.mac(n);
        let _ = writeln!(
            s,
            "if [ \"$net_default_mac\" = \"{mac}\" ]; then configfile $prefix/grub.cfg-01-{}; fi",
            mac.replace(':', "-")
        );
    }
    let _ = writeln!(s, "set timeout={}", c.d.boot.timeout.max(30));
    let _ = writeln!(s, "menuentry \"krg: no boot menu for $net_default_mac, add it to the cluster description (reboot)\" {{\n  reboot\n}}");
    s
}

fn grub_node(c: &Ctx, n: &Node) -> String {
    let b = &c.d.boot;
    let args = c.cmdline(n);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {}: rendered by nfsroot; edit the description and re-render.",
        title(c, n)
    );
    let _ = writeln!(s, "set default=0\nset timeout={}", b.timeout);
    for (name, extra) in [
        (title(c, n), ""),
        (format!("{} single-user (rescue)", title(c, n)), " single"),
    ] {
        let _ = writeln!(s, "menuentry \"{name}\" {{");
        let _ = writeln!(s, "  linux /{} {args}{extra}", b.kernel);
        let _ = writeln!(s, "  initrd /{}", b.initrd);
        let _ = writeln!(s, "}}");
    }
    s
}

/// The newest kernel of the boot image and its initrd, as (path under the
/// TFTP root, bytes). Err is a note for the admin: the image has no kernel.
pub fn kernel_from_image(c: &Ctx) -> Result<Vec<(String, Vec<u8>)>, String> {
    let image = c.d.image.root.join(&c.d.image.boot);
    if !image.is_dir() {
        return Err(format!(
            "no kernel copied: image {} does not exist yet",
            c.d.image.boot
        ));
    }
    let boot = image.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .filter(|v| boot.join(format!("initrd.img-{v}")).is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by(|a, b| natural_cmp(a, b));
    let Some(v) = versions.pop() else {
        return Err(format!(
            "no kernel copied: {} has no vmlinuz-* with a matching initrd.img-* (build the image with --include linux-image-amd64,initramfs-tools, or place {} and {} in the TFTP root yourself)",
            boot.display(),
            c.d.boot.kernel,
            c.d.boot.initrd
        ));
    };
    let read = |name: String| {
        std::fs::read(boot.join(&name)).map_err(|e| {
            format!(
                "no kernel copied: reading {}: {e}",
                boot.join(&name).display()
            )
        })
    };
    Ok(vec![
        (c.d.boot.kernel.clone(), read(format!("vmlinuz-{v}"))?),
        (c.d.boot.initrd.clone(), read(format!("initrd.img-{v}"))?),
    ])
}

/// Compare version strings with digit runs as numbers: 6.1.0-10 < 6.1.0-9 is wrong, this gets it right.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut v = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                v.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        v
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let o = match (x.0 && y.0, x.1.parse::<u128>(), y.1.parse::<u128>()) {
            (true, Ok(p), Ok(q)) => p.cmp(&q),
            _ => x.1.cmp(y.1),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn natural_order_of_kernel_versions() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"];
        v.sort_by(|a, b| super::natural_cmp(a, b));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]);
    }
}
