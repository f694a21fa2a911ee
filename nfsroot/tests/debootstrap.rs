//! One real `image build` with debootstrap, from the mirror this system's
//! apt sources name (read at run time). It is skipped — and says so — only
//! when that mirror cannot be reached.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use common::*;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// host:port of a mirror URL (http or https).
fn endpoint(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let hostport = rest.split('/').next()?;
    let hostport = hostport.rsplit('@').next()?;
    Some(if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:{}", if scheme == "https" { 443 } else { 80 })
    })
}

fn reachable(url: &str) -> bool {
    let Some(ep) = endpoint(url) else {
        return false;
    };
    let Ok(addrs) = ep.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
}

#[test]
fn debootstrap_builds_a_bookworm_image_with_krg_installed() {
    let Some(mirror) = nfsroot::image::apt_mirror("bookworm") else {
        eprintln!("SKIPPED: no apt source of this system carries bookworm");
        return;
    };
    if !reachable(&mirror) {
        eprintln!("SKIPPED: mirror {mirror} (from this system's apt sources) is not reachable");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("images");
    let bins = work.path().join("bins");
    std::fs::create_dir(&bins).unwrap();
    std::fs::copy("/bin/true", bins.join("krgd")).unwrap();
    // minbase and no extra packages keeps this to a minute or two.
    let s = ok(&[
        "image",
        "build",
        "deb",
        "--root",
        root.to_str().unwrap(),
        "--suite",
        "bookworm",
        "--include",
        "",
        "--krg-bin-dir",
        bins.to_str().unwrap(),
    ]);
    assert!(s.contains("built image deb"), "{s}");
    let img = root.join("deb");
    assert!(std::fs::read_to_string(img.join("etc/debian_version"))
        .unwrap()
        .starts_with("12"));
    assert!(img.join("usr/local/sbin/krgd").is_file());
    assert!(img.join("etc/systemd/system/krgd.service").is_file());
    assert!(img.join("config/krg_scheduler").is_dir());
    let v = ok(&["image", "snapshot", "deb", "--root", root.to_str().unwrap()]);
    assert!(v.starts_with("made deb@1"), "{v}");
    ok(&["image", "rm", "deb@1", "--root", root.to_str().unwrap()]);
    ok(&["image", "rm", "deb", "--root", root.to_str().unwrap()]);
}

#[test]
fn mirror_endpoint_parsing() {
    assert_eq!(
        endpoint("http://m.example/debian").as_deref(),
        Some("m.example:80")
    );
    assert_eq!(
        endpoint("https://m.example:8443/x").as_deref(),
        Some("m.example:8443")
    );
}
