//! Policy plug-ins that move processes, on a loopback cluster of 2 real
//! krgds: a plug-in (a shell script, declared `moves`) that answers `move`
//! for one named process moves it from node 1 to node 2 through the
//! balancer's machinery (`krg ps` shows it on node 2, `decisions` says
//! so); a plug-in answering `move` of a process that is not node 1's, or
//! garbage, is refused in `decisions` and krgd's log, and nothing moves.
//! Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use krg_tests::balance::{alive, formed, krg_ps, registry, tree, Hogs};
use krg_tests::{serial, wait_for, TestCluster};

const BOUND: Duration = Duration::from_secs(20);

/// Moves process $1 to node $2 once it is told it is movable.
const MOVER: &str = r#"#!/bin/sh
want=$1; to=$2
echo 'port port_load any'
echo moves
echo ready
seen=''
while read -r kind a b c rest; do case $kind in
process) [ "$a" = "$want" ] && [ "$c" = movable ] && seen=1 ;;
decide) if [ -n "$seen" ]; then echo "move $want $to the test wants it there"; else echo "none $want is not movable here"; fi; seen='' ;;
esac; done
"#;

/// Answers `move` of process $1 (not node 1's), then garbage, in turn.
const LIAR: &str = r#"#!/bin/sh
foreign=$1; n=0
echo 'port port_load any'
echo moves
echo ready
while read -r kind rest; do [ "$kind" = decide ] || continue
n=$((n + 1))
if [ $((n % 2)) = 1 ]; then echo "move $foreign 2 not mine"; else echo 'move banana'; fi
done
"#;

fn script(c: &TestCluster, name: &str, text: &str) -> std::path::PathBuf {
    let p = c.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn decisions(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("decisions")).unwrap_or_default()
}

#[test]
fn a_plugin_moves_a_named_process_and_bad_answers_are_refused() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let hogs = Hogs::start(&c, 1, 1)?;
    let hog = hogs.pids[0];
    let foreign = std::process::id();
    let mover = script(&c, "mover.sh", MOVER);
    let liar = script(&c, "liar.sh", LIAR);
    std::fs::write(
        registry(&c),
        format!(
            "mover policy {} {hog} 2\nliar policy {} {foreign}\n",
            mover.display(),
            liar.display()
        ),
    )?;
    let t = tree(&c, 1);
    std::fs::create_dir(t.join("schedulers/plug"))?;

    // A plug-in that lies: refused, logged, nothing moves.
    let p = t.join("schedulers/plug/liar");
    std::fs::create_dir(&p)?;
    let attrs: Vec<String> = ["max_moves", "interval", "min_residency"]
        .iter()
        .map(|a| std::fs::read_to_string(p.join(a)).unwrap())
        .collect();
    assert_eq!(attrs, ["1\n", "2000\n", "10000\n"], "{attrs:?}");
    let not_mine =
        format!("refused {foreign} to node 2: {foreign} is not one of this node's processes");
    let d = wait_for(BOUND, "both bad answers refused", || {
        let d = decisions(&p);
        (d.contains(&not_mine) && d.contains("refused the plug-in's answer: ")).then_some(d)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", decisions(&p), c.log_tails(20)))?;
    assert!(d.contains("answered move of a bad pid \"banana\""), "{d}");
    assert!(!d.contains(" moved "), "{d}");
    // the log may be written a moment after the file
    wait_for(BOUND, "both refusals in krgd's log", || {
        let log = c.nodes[&1].log_text();
        (log.contains(&not_mine) && log.contains("banana")).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.log_tails(20)))?;
    std::fs::remove_dir(&p)?;
    assert!(krg_ps(&c).iter().all(|(_, pid)| *pid != i64::from(hog)));

    // A plug-in that moves the named process to node 2.
    let p = t.join("schedulers/plug/mover");
    std::fs::create_dir(&p)?;
    let moved = format!("moved {hog} from node 1 to node 2: plug-in: the test wants it there (");
    // node 2 shows it a moment before node 1's move returns
    wait_for(
        BOUND,
        "the hog on node 2, and the move in decisions",
        || {
            (krg_ps(&c).contains(&(2, i64::from(hog))) && decisions(&p).contains(&moved))
                .then_some(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", decisions(&p), c.log_tails(20)))?;
    let d = decisions(&p);
    assert!(d.contains(&moved), "{d}");
    assert_eq!(d.matches(" moved ").count(), 1, "{d}");
    assert!(alive(hog));
    Ok(())
}
