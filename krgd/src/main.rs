//! The krgd binary: parse flags, start logging, resolve the configuration
//! (file, flags, kernel command line) and run the daemon until a signal.

use clap::Parser;
use krgd::config::Settings;

/// glibc's malloc serves blocks above its mmap threshold (128 KiB at
/// first, then moving with what was freed) by mmap, and hands the top of
/// its heap back to the kernel above its trim threshold. krgd allocates a
/// buffer for every frame it relays (256 KiB stdin and output frames,
/// kDFS data, 4 MiB migration chunks), so both kept giving memory back
/// and faulting it in again, and on this project's VM a page touched for
/// the first time is slow. With these two limits fixed, `krg push` of
/// 100 MiB to 10 nodes went from 0.89 s to 0.65 s and a 100 MiB
/// migration from 0.48 s to 0.27-0.31 s (shipping its memory: 330 ms →
/// 150-200 ms). The flood test's RSS growth stayed at 9-10 MiB.
fn keep_frame_buffers() {
    const MMAP_ABOVE: libc::c_int = 8 << 20;
    const TRIM_ABOVE: libc::c_int = 16 << 20;
    // SAFETY: mallopt only changes two allocator parameters; it is called
    // before any other thread exists. A refusal (0) leaves glibc's
    // defaults, which work, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_ABOVE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_ABOVE);
    }
}

fn main() {
    keep_frame_buffers();
    krg_clidoc::intercept_with::<Settings>(&krgd::manpages::PAGE, krgd::manpages::EXTRA);
    let settings = Settings::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = match settings
        .merged_with_file()
        .and_then(|s| s.resolve(&cmdline))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("krgd: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("krgd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(krgd::daemon::run(config));
    // An unmount still waiting (krgd::unmount) must not keep krgd alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(e) = outcome {
        eprintln!("krgd: {e}");
        std::process::exit(1);
    }
}
