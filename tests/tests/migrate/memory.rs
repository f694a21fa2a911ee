//! Every page of a moved process arrives, written all the time or pulled
//! after it runs (post-copy).

use super::*;

/// Stamps a generation into random pages of 64 MiB as fast as it can and
/// keeps the expected generation of each page elsewhere in its memory;
/// each line: iteration, PID, pages whose content differs from the record.
/// Pages written all the time, during the copy made while it runs and the
/// freeze: after the move (there and back) each page still holds what the
/// process last wrote into it. `--timings` names the phases of both nodes.
#[test]
fn a_process_writing_all_the_time_keeps_every_page() -> Result<()> {
    let _g = serial();
    let c = formed(2)?;
    let (job, out, before) = movable(&c, STAMPER, "stamps.txt");
    let pid = job.0;
    let o = migrate(&c, 1, &["--timings", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    for phase in ["dump.freeze", "dump.ship", "push", "target.restart.load"] {
        assert!(
            err(&o).contains(&format!("migrate: timings: {phase} ")),
            "no {phase} in {}",
            err(&o)
        );
    }
    let mid = grows(&out, before);
    let o = migrate(&c, 1, &[&format!("2:{pid}"), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    grows(&out, mid + 3);
    assert!(stamps_intact(&out, pid) > mid as usize);
    Ok(())
}

/// Post-copy (`--postcopy`): the process runs on the target before its
/// memory is there, its pages pulled from the origin as it touches them
/// and behind it; every page still holds what the process last wrote,
/// there and back, and each origin drops its copy of the image once the
/// target has it all.
#[test]
fn postcopy_brings_every_page_after_the_process_runs() -> Result<()> {
    let _g = serial();
    let (c, port) = formed_with_metrics(2)?;
    let (job, out, before) = movable(&c, STAMPER, "stamps.txt");
    let pid = job.0;
    let o = migrate(&c, 1, &["--postcopy", "--json", &pid.to_string(), "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(rep["to"], 2, "{rep}");
    // the 64 MiB of page data did not go before the process ran there
    let sent = rep["bytes"].as_u64().unwrap();
    assert!(sent < 8 << 20, "{sent} bytes sent before the handover");
    let mid = grows(&out, before);
    let o = migrate(&c, 1, &["--postcopy", &format!("2:{pid}"), "1"]);
    assert!(o.status.success(), "{}", err(&o));
    grows(&out, mid + 3);
    stamps_intact(&out, pid);
    for node in [1, 2] {
        c.wait_no_migration_image(node)?;
    }
    // node 1, the second move's target, counts the memory it pulled
    let m = metrics(port);
    let pulled = m["krg_migration_pulled_bytes_total"];
    assert!(pulled >= (64 << 20) as f64, "pulled {pulled} bytes");
    // and, as the target, waited for the cluster to place the process
    assert!(m["krg_migration_placement_seconds_count"] >= 1.0, "{m:?}");
    Ok(())
}
