//! The krgd binary: parse flags, start logging, resolve the configuration
//! (file, flags, kernel command line) and run the daemon until a signal.

use clap::Parser;
use krgd::config::Settings;

fn main() {
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
