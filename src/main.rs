use clap::Parser;
use kube_proxy_rs::cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
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
