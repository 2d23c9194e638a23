use clap::Parser;
use relay::Relay;
use relay::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

// jemalloc, with a background thread that returns freed pages within a second
// (.cargo/config.toml): glibc kept the memory of a thousand retired LANs for good
// (docs/benchmarks.md, "Memory after load").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "v86-relay: --log {:?} is not a valid filter ({e}); using `info`",
            cli.log
        );
        EnvFilter::new("info")
    });
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(filter)
            .init(),
    }
    if let Some(Command::Token(args)) = &cli.command {
        return match args.mint(relay::app::unix_now()) {
            Ok(token) => {
                println!("{token}");
                std::process::ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("v86-relay token: {problem}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("v86-relay: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Tap(args)) => relay::tap::run(args).await,
            Some(Command::Token(_)) => Ok(()),
            None => serve(cli.serve).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("v86-relay: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: relay::cli::ServeArgs) -> anyhow::Result<()> {
    let config = args.load_config()?;
    // A reload reads the same file and flags again.
    let source: relay::reload::ConfigSource =
        Box::new(move || args.load_config().map_err(|e| e.to_string()));
    let relay = Relay::start_with_source(config, Some(source)).await?;
    tracing::info!(
        "v86-relay listening on ws://{}/ (LAN default) and ws://{}/lan/NAME",
        relay.listen_addr,
        relay.listen_addr
    );
    if let Some(addr) = relay.metrics_addr {
        tracing::info!("metrics on http://{addr}/metrics");
    }
    wait_for_stop(&relay).await?;
    tracing::info!("shutting down: closing client connections");
    if !relay.shutdown().await {
        tracing::warn!("some connections did not close within the grace period");
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the config meanwhile.
async fn wait_for_stop(relay: &Relay) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                // The reload logs what it did, and why not when it refuses the file.
                let _ = relay.reload().await;
            }
        }
    }
}
