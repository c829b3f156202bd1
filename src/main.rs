use clap::Parser;
use kube_proxy_rs::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Two malloc arenas instead of glibc's 8 per core: the proxy is not
    // allocation-bound, and each extra arena keeps its own freed memory
    // (measured at 10,000 Services: peak RSS 104 -> 98 MB).
    // SAFETY: mallopt only tunes the allocator, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
