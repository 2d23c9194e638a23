//! `v86-loadtest`: N synthetic v86 VMs in M LANs against a v86-relay. See `--help`.

use clap::Parser;
use loadtest::{Args, format_report, raise_nofile_limit, run};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Thousands of sockets: lift the soft open-files limit to the hard limit.
    let nofile = raise_nofile_limit();
    if let Some(limit) = nofile
        && u64::from(args.clients) + 64 > limit
    {
        eprintln!(
            "warning: open-files limit is {limit}, fewer than --clients {} needs; raise it (ulimit -Hn)",
            args.clients
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&args))?;
    println!("{}", format_report(&report));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
