//! `keel`: the Keel daemon (`keel serve`), a local cluster in one command (`keel up`), and
//! the admin CLI over the HTTP API.

use std::time::Duration;

use clap::{Parser, Subcommand};
use keel_node::cli::{self, ClientCommand, ClientOpts};
use keel_node::cli::{serve, up};
use keel_node::config::ServeArgs;

/// Keel: a high-availability cluster manager.
#[derive(Parser)]
#[command(name = "keel", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    client: ClientOpts,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a Keel node
    Serve(Box<ServeArgs>),
    /// Start a local cluster of child processes (default three nodes) and stream their logs
    Up(up::UpArgs),
    #[command(flatten)]
    Client(ClientCommand),
    /// Stream a consistent backup (cluster state + datastore at one position) from the node at --addr
    Backup(keel_node::backup::BackupArgs),
    /// Seed one data dir of a new cluster from a backup file (checked before anything is written)
    Restore(keel_node::backup::RestoreArgs),
    /// Git server hook (pre-receive or update) refusing pushes of commits from a deposed primary
    ///
    /// `--addr` takes every node's API address, comma-separated: the highest epoch any of them
    /// reports counts. Exit 0 lets the push through, 1 refuses it, with the reason on stderr
    /// (which git shows the pusher). See docs/operations.md, "Guarding the Git Sync branch".
    GitGuard(cli::git_guard::GitGuardArgs),
    /// Print a shell completion script: `keel completions bash > /etc/bash_completion.d/keel`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.command {
        use clap::CommandFactory;
        use std::io::Write;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "keel", &mut script);
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(&script);
        return;
    }
    // libgit2's socket timeouts are process-wide and must be set before any other thread
    // runs: a Git Sync remote that accepts and then stalls must not hold the agent forever.
    // SAFETY: no other thread exists yet (the async runtime is built below).
    if let Err(e) = unsafe { keel_gitsync::set_network_timeouts(Duration::from_secs(10), Duration::from_secs(60)) } {
        eprintln!("warning: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Cmd::Serve(a) => serve::run(*a).await,
            Cmd::Up(a) => up::run(a).await,
            Cmd::Client(c) => cli::run(c, &cli.client).await,
            Cmd::Backup(a) => keel_node::backup::run_backup(a, &cli.client).await,
            Cmd::Restore(a) => keel_node::backup::run_restore(a, cli.client.output).await,
            Cmd::GitGuard(a) => cli::git_guard::run(a, &cli.client).await,
            Cmd::Completions { .. } => Ok(0),
        }
    });
    // Don't wait for stray blocking tasks (e.g. a stdin reader) on the way out.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
