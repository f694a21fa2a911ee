//! The real binary on real files: render, check with dhcpd and dnsmasq,
//! idempotence, --diff, confinement, nodes add|del, krgd.toml parsed by krgd.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use common::*;
use std::path::Path;

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn rendered_dhcp_files_pass_the_real_checkers() {
    let t = tempfile::tempdir().unwrap();
    let desc = write_description(t.path(), &t.path().join("images"), "");
    let d = desc.to_str().unwrap();
    let out = t.path().join("out");
    let o = out.to_str().unwrap();
    ok(&["render", d, "--out", o]);
    let s = ok(&["check", d, "--out", o]);
    assert!(s.contains("accepted by dhcpd -t"), "{s}");
    assert!(
        s.contains("3 GRUB menus accepted by grub-script-check"),
        "grub-common must be installed: {s}"
    );
    ok(&["render", d, "--out", o, "--dhcp", "dnsmasq"]);
    let s = ok(&["check", d, "--out", o, "--dhcp", "dnsmasq"]);
    assert!(s.contains("accepted by dnsmasq --test"), "{s}");
    // The grub loader variant, too.
    let text = std::fs::read_to_string(&desc)
        .unwrap()
        .replace("loader = \"ipxe\"", "loader = \"grub\"");
    std::fs::write(&desc, text).unwrap();
    ok(&["render", d, "--out", o]);
    ok(&["check", d, "--out", o]);
    ok(&["render", d, "--out", o, "--dhcp", "dnsmasq"]);
    ok(&["check", d, "--out", o, "--dhcp", "dnsmasq"]);
    // And with every optional network key set.
    let text = std::fs::read_to_string(&desc)
        .unwrap()
        .replace("# interface = \"eth1\"", "interface = \"eth1\"")
        .replace("# gateway = \"10.0.0.254\"", "gateway = \"10.0.0.254\"")
        .replace(
            "# dns = [\"10.0.0.1\"]",
            "dns = [\"10.0.0.1\", \"10.0.0.2\"]",
        );
    std::fs::write(&desc, text).unwrap();
    ok(&["render", d, "--out", o, "--dhcp", "dnsmasq"]);
    let conf = std::fs::read_to_string(out.join("dhcp/dnsmasq.conf")).unwrap();
    assert!(
        conf.contains("interface=eth1")
            && conf.contains("dhcp-option=option:dns-server,10.0.0.1,10.0.0.2"),
        "{conf}"
    );
    ok(&["check", d, "--out", o, "--dhcp", "dnsmasq"]);
    ok(&["render", d, "--out", o]);
    assert!(std::fs::read_to_string(out.join("dhcp/dhcpd.conf"))
        .unwrap()
        .contains("option routers 10.0.0.254;"));
    ok(&["check", d, "--out", o]);
}

#[test]
fn checkers_catch_a_broken_file_and_a_stale_tree() {
    let t = tempfile::tempdir().unwrap();
    let desc = write_description(t.path(), &t.path().join("images"), "");
    let (d, out) = (desc.to_str().unwrap(), t.path().join("out"));
    let o = out.to_str().unwrap();
    ok(&["render", d, "--out", o]);
    std::fs::write(
        out.join("dhcp/dhcpd.conf"),
        "subnet 10.0.0.0 netmask 255.255.255.0 { next-server ; }\n",
    )
    .unwrap();
    let e = fails(&["check", d, "--out", o]);
    assert!(e.starts_with("nfsroot: dhcpd on"), "{e}");
    ok(&["render", d, "--out", o]);
    std::fs::write(out.join("tftp/grub/grub.cfg"), "edited\n").unwrap();
    let e = fails(&["check", d, "--out", o]);
    assert!(
        e.contains("out of date: 0 files would be created, 1 changed"),
        "{e}"
    );
    std::fs::write(
        out.join("tftp/grub/grub.cfg"),
        "menuentry \"x\" {\n linux /a\n",
    )
    .unwrap();
    let e = fails(&["check", d, "--out", o]);
    assert!(e.starts_with("nfsroot: grub-script-check on"), "{e}");
}

#[test]
fn description_errors_name_field_and_node() {
    let t = tempfile::tempdir().unwrap();
    let desc = write_description(t.path(), &t.path().join("images"), "");
    let text = std::fs::read_to_string(&desc)
        .unwrap()
        .replace("ip = \"10.0.0.12\"", "ip = \"10.0.1.12\"");
    std::fs::write(&desc, text).unwrap();
    let e = fails(&[
        "render",
        desc.to_str().unwrap(),
        "--out",
        t.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(
        e.trim(),
        "nfsroot: node node2: node[1].ip: 10.0.1.12 is not a host address of 10.0.0.0/24"
    );
    assert!(
        !t.path().join("out").exists(),
        "nothing is written for an invalid description"
    );
}

#[test]
fn render_is_idempotent_diff_writes_nothing_and_stays_inside_out() {
    let t = tempfile::tempdir().unwrap();
    let images = t.path().join("images");
    let desc = write_description(t.path(), &images, "");
    let (d, out) = (desc.to_str().unwrap(), t.path().join("out"));
    let o = out.to_str().unwrap();

    let s = ok(&["render", d, "--out", o, "--diff"]);
    assert!(s.contains("+++ b") && s.contains("/dhcp/dhcpd.conf"), "{s}");
    assert!(!out.exists(), "--diff wrote something");

    ok(&["render", d, "--out", o]);
    let before: Vec<_> = files_under(t.path())
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    let s = ok(&["render", d, "--out", o]);
    assert!(s.starts_with("nothing changed"), "{s}");
    let s = ok(&["render", d, "--out", o, "--diff"]);
    assert!(s.starts_with("nothing would change"), "{s}");
    let after: Vec<_> = files_under(t.path())
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert_eq!(before, after);
    // Everything written is under --out (the description sits next to it).
    for (p, _) in &after {
        assert!(
            p.starts_with(&out) || p == &desc,
            "{} written outside --out",
            p.display()
        );
    }
    assert!(!images.exists(), "render created the image root");

    // A change shows as a unified diff and only that file changes.
    let text = std::fs::read_to_string(&desc)
        .unwrap()
        .replace("append = \"quiet\"", "append = \"quiet console=ttyS0\"");
    std::fs::write(&desc, text).unwrap();
    let s = ok(&["render", d, "--out", o, "--diff"]);
    assert!(
        s.contains("-kernel /krg/vmlinuz initrd=initrd.img node_id=1 session_id=1 root=/dev/nfs"),
        "{s}"
    );
    assert!(s.contains("+kernel /krg/vmlinuz initrd=initrd.img node_id=1 session_id=1 root=/dev/nfs nfsroot=10.0.0.1:"), "{s}");
    assert!(s.contains("ip=dhcp rw quiet console=ttyS0\n"), "{s}");
    assert!(s.contains("@@ -"), "{s}");
    let s = ok(&["render", d, "--out", o]);
    assert!(s.contains("0 created, 4 changed, 0 removed"), "{s}");
    // No temporary files are left behind by the atomic writes.
    assert!(files_under(&out)
        .iter()
        .all(|p| !p.to_string_lossy().contains("nfsroot-tmp")));
}

#[test]
fn boot_menus_and_krgd_toml_agree_and_krgd_accepts_every_krgd_toml() {
    let t = tempfile::tempdir().unwrap();
    let desc = write_description(t.path(), &t.path().join("images"), "");
    let out = t.path().join("out");
    ok(&[
        "render",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let description = nfsroot::Description::load(&desc).unwrap();
    for n in &description.nodes {
        let text =
            std::fs::read_to_string(out.join(format!("nodes/{}/krgd.toml", n.name))).unwrap();
        let settings: krgd::config::Settings =
            toml::from_str(&text).unwrap_or_else(|e| panic!("krgd rejects {}: {e}", n.name));
        let mac = n.mac.replace(':', "-");
        for menu in [
            format!("tftp/ipxe/{mac}.ipxe"),
            format!("tftp/grub/grub.cfg-01-{mac}"),
        ] {
            let m = std::fs::read_to_string(out.join(&menu)).unwrap();
            let line = m.lines().find(|l| l.contains("root=/dev/nfs")).unwrap();
            // What krgd would read from /proc/cmdline on that node:
            let cfg = krgd::config::Settings::default().resolve(line).unwrap();
            assert_eq!(Some(cfg.node_id), settings.node_id, "{menu}");
            assert_eq!(Some(cfg.session_id), settings.session_id, "{menu}");
            assert_eq!(cfg.node_id, n.node_id);
        }
        settings.resolve("").unwrap();
    }
    let shared = std::fs::read_to_string(out.join("root/etc/krg/krgd.toml")).unwrap();
    let s: krgd::config::Settings = toml::from_str(&shared).unwrap();
    assert_eq!(
        s.node_id, None,
        "the shared krgd.toml leaves node_id to the kernel command line"
    );
    assert_eq!(s.resolve("node_id=2 session_id=1").unwrap().node_id, 2);
}

#[test]
fn nodes_add_and_del_edit_the_description_keep_comments_and_re_render() {
    let t = tempfile::tempdir().unwrap();
    let desc = write_description(t.path(), &t.path().join("images"), "");
    let (d, out) = (desc.to_str().unwrap(), t.path().join("out"));
    let o = out.to_str().unwrap();
    ok(&["render", d, "--out", o]);
    let s = ok(&[
        "nodes",
        "add",
        d,
        "node3",
        "52:54:00:00:00:03",
        "10.0.0.13",
        "--out",
        o,
    ]);
    assert!(s.contains("added node node3 with node_id 3"), "{s}");
    let text = std::fs::read_to_string(&desc).unwrap();
    assert!(
        text.contains("# One [[node]] per machine."),
        "comments kept"
    );
    assert!(out.join("tftp/ipxe/52-54-00-00-00-03.ipxe").is_file());
    assert!(std::fs::read_to_string(out.join("dhcp/dhcpd.conf"))
        .unwrap()
        .contains("host node3 {"));
    assert!(std::fs::read_to_string(out.join("nodes/node1/krgd.toml"))
        .unwrap()
        .contains("10.0.0.13:7600"));

    let e = fails(&[
        "nodes",
        "add",
        d,
        "node4",
        "52:54:00:00:00:03",
        "10.0.0.14",
        "--out",
        o,
    ]);
    assert!(
        e.contains("node node4: node[3].mac: 52:54:00:00:00:03 is also the MAC of node node3"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&desc).unwrap(),
        text,
        "a refused add leaves the file alone"
    );

    let s = ok(&["nodes", "del", d, "2", "--out", o]);
    assert!(s.contains("removed node 2 (node_id 2)"), "{s}");
    assert!(
        !out.join("tftp/ipxe/52-54-00-00-00-02.ipxe").exists(),
        "the deleted node's menu is removed"
    );
    assert!(!out.join("nodes/node2").join("krgd.toml").exists());
    assert!(!std::fs::read_to_string(out.join("dhcp/dhcpd.conf"))
        .unwrap()
        .contains("node2"));
    let e = fails(&["nodes", "del", d, "node9", "--out", o]);
    assert!(e.contains("node node9"), "{e}");
}

#[test]
fn init_writes_the_example_once() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("c.toml");
    ok(&["init", f.to_str().unwrap()]);
    let e = fails(&["init", f.to_str().unwrap()]);
    assert!(e.contains("exists"), "{e}");
}

#[test]
fn shared_mode_exports_ro_root_and_rw_dirs_and_the_generator_mounts_them() {
    let t = tempfile::tempdir().unwrap();
    let images = t.path().join("images");
    let desc = write_description(t.path(), &images, "");
    let text = std::fs::read_to_string(&desc)
        .unwrap()
        .replace("mode = \"clone\"", "mode = \"shared\"");
    std::fs::write(&desc, text).unwrap();
    // The boot version exists, so per-node dirs are made and seeded from it.
    let tree = prepared_tree(t.path());
    let r = images.to_str().unwrap();
    ok(&[
        "image",
        "build",
        "base",
        "--root",
        r,
        "--from-tree",
        tree.to_str().unwrap(),
    ]);
    ok(&["image", "snapshot", "base", "--root", r]);
    let out = t.path().join("out");
    let s = ok(&[
        "render",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(s.contains("its /etc/fstab is not the rendered one"), "{s}");
    let exports = std::fs::read_to_string(out.join("nfs/exports")).unwrap();
    assert!(
        exports.contains(&format!("{}/base@1\t10.0.0.0/24(ro,", r)),
        "{exports}"
    );
    assert!(
        exports.contains(&format!("{}/.state/node2/var\t10.0.0.12(rw,", r)),
        "{exports}"
    );
    assert_eq!(
        std::fs::read_to_string(images.join(".state/node1/var/lib/state")).unwrap(),
        "seed\n"
    );

    let gen = out.join("root/etc/systemd/system-generators/krg-node-mounts");
    let units = t.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let st = std::process::Command::new("sh")
        .arg(&gen)
        .arg(&units)
        .env("KRG_CMDLINE", "quiet node_id=2 session_id=1")
        .status()
        .unwrap();
    assert!(st.success());
    let unit = std::fs::read_to_string(units.join("var.mount")).unwrap();
    assert!(
        unit.contains(&format!("What=10.0.0.1:{r}/.state/node2/var")),
        "{unit}"
    );
    assert!(units.join("local-fs.target.requires/root.mount").exists());
    let ks: krgd::config::Settings =
        toml::from_str(&std::fs::read_to_string(out.join("root/etc/krg/krgd.toml")).unwrap())
            .unwrap();
    assert_eq!(ks.session_id, Some(1));
    let fstab = std::fs::read_to_string(out.join("root/etc/fstab")).unwrap();
    assert!(
        fstab.contains("/config/krg_scheduler is a FUSE mount that krgd serves"),
        "{fstab}"
    );
}

#[test]
fn render_writes_the_ganesha_exports_and_the_ipxe_loaders() {
    let t = tempfile::tempdir().unwrap();
    let desc = write_description(t.path(), &t.path().join("images"), "");
    let d = desc.to_str().unwrap();
    let out = t.path().join("out");
    let o = out.to_str().unwrap();
    ok(&["render", d, "--out", o, "--dhcp", "dnsmasq"]);
    let g = std::fs::read_to_string(out.join("nfs/ganesha.conf")).unwrap();
    let images = t.path().join("images");
    for want in [
        "Bind_addr = 10.0.0.1;".to_string(),
        "Enable_NLM = false;".into(),
        "Graceless = true;".into(),
        format!(
            "RecoveryRoot = \"{}\";",
            out.join("nfs/ganesha-recovery").display()
        ),
        format!("Path = \"{}\";", images.join("node1").display()),
        "Clients = 10.0.0.11;".into(),
        format!("Path = \"{}\";", images.join("node2").display()),
        "Clients = 10.0.0.12;".into(),
        "Squash = No_Root_Squash;".into(),
        "Name = VFS;".into(),
    ] {
        assert!(g.contains(&want), "{want} missing from:\n{g}");
    }
    assert_eq!(g.matches("EXPORT {").count(), 2, "{g}");
    assert_eq!(g.matches("Access_Type = RW;").count(), 2, "{g}");
    // The loaders DHCP hands out come from Debian's ipxe package.
    for (f, src) in [("undionly.kpxe", "undionly.kpxe"), ("ipxe.efi", "ipxe.efi")] {
        assert_eq!(
            std::fs::read(out.join("tftp/ipxe").join(f)).unwrap(),
            std::fs::read(std::path::Path::new(nfsroot::render::IPXE_DIR).join(src))
                .expect("the ipxe package must be installed"),
            "{f}"
        );
    }
    // Shared mode: the version read-only to the subnet, each rw dir to its node.
    let shared = write_description(t.path(), &t.path().join("images"), "");
    let text = std::fs::read_to_string(&shared)
        .unwrap()
        .replace("mode = \"clone\"", "mode = \"shared\"");
    std::fs::write(&shared, text).unwrap();
    ok(&[
        "render",
        shared.to_str().unwrap(),
        "--out",
        o,
        "--dhcp",
        "dnsmasq",
    ]);
    let g = std::fs::read_to_string(out.join("nfs/ganesha.conf")).unwrap();
    assert!(
        g.contains("Clients = 10.0.0.0/24;\n        Access_Type = RO;"),
        "{g}"
    );
    assert!(
        g.contains(&format!(
            "Path = \"{}\";",
            images.join(".state/node2/var").display()
        )),
        "{g}"
    );
    assert_eq!(g.matches("EXPORT {").count(), 1 + 2 * 3, "{g}");
    // GRUB loaders are not copied: the note says how to make them.
    let text = std::fs::read_to_string(&shared)
        .unwrap()
        .replace("loader = \"ipxe\"", "loader = \"grub\"");
    std::fs::write(&shared, text).unwrap();
    let s = ok(&["render", shared.to_str().unwrap(), "--out", o]);
    assert!(s.contains("grub-mknetdir"), "{s}");
}
