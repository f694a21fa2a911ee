//! The krgd binary: parse flags, start logging, resolve the configuration
//! (file, flags, kernel command line) and run the daemon until a signal.

use clap::Parser;
use krgd::config::Settings;

/// glibc's malloc serves blocks above its mmap threshold (128 KiB at
/// first, then moving with what was freed) by mmap, and hands the top of
/// its heap back to the kernel above its trim threshold. krgd allocates a
/// buffer of up to a few hundred KiB for every frame it relays (a job's
/// stdin and output, kDFS data, migration pages), so both kept giving
/// memory back and faulting it in again: on this project's VM a page
/// touched for the first time is slow, and `krg push` of 100 MiB to 10
/// nodes spent 0.89 s, 0.76 s with these two limits fixed (measured
/// with `GLIBC_TUNABLES` first). 4 MiB of free heap kept per arena is
/// small against krgd's resident size.
fn keep_frame_buffers() {
    const MMAP_ABOVE: libc::c_int = 1 << 20;
    const TRIM_ABOVE: libc::c_int = 4 << 20;
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
    if let Err(e) = runtime.block_on(krgd::daemon::run(config)) {
        eprintln!("krgd: {e}");
        std::process::exit(1);
    }
}
