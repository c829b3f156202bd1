use clap::Parser;
use kube_proxy_rs::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    // One malloc arena instead of glibc's 8 per core: the proxy is not
    // allocation-bound, and each extra arena keeps its own freed memory. And
    // a fixed mmap threshold: blocks of 128 KiB and more (restore payloads,
    // listing pages) are mapped and unmapped on their own instead of, after
    // glibc raises its threshold past them, being carved from the heap,
    // whose freed space fragments. Measured at 10,000 Services: peak RSS
    // 68 -> 61 MB (arenas: 8 -> 2 had saved 6 MB before, 2 -> 1 saves 6).
    // SAFETY: mallopt only tunes the allocator, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Render(args)) => kube_proxy_rs::run::render(args),
        None if cli.cleanup => kube_proxy_rs::run::cleanup(&cli.flags),
        None if cli.init_only => kube_proxy_rs::run::init_only(&cli.flags),
        None => kube_proxy_rs::run::daemon(&cli.flags),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-proxy-rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
