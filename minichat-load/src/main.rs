//! `minichat-load`: points a scenario at a Minichat deployment and reports what it measured.
//! See the crate's README and BENCHMARKS.md at the top of the repository for how it is used.

mod args;
mod error;
mod histogram;
mod http;
mod ledger;
mod report;
mod scenarios;
mod target;
mod timeline;
mod ws;

use args::{Cli, Scenario};
use clap::Parser;
use report::Report;
use std::process::ExitCode;
use std::sync::Arc;
use target::Deployment;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("minichat-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(report) => {
            report.emit();
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("minichat-load: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> error::Result<Report> {
    let deployment = Arc::new(Deployment::new(&cli.target)?);
    let mut params = match serde_json::to_value(&cli.scenario) {
        // Externally tagged: {"chat": {...}}; the report names the scenario itself.
        Ok(serde_json::Value::Object(tagged)) => tagged
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    if let serde_json::Value::Object(map) = &mut params {
        map.insert("urls".into(), serde_json::json!(cli.target.urls));
    }
    let mut report = Report {
        params,
        nodes: deployment.nodes.len(),
        ..Report::default()
    };
    match &cli.scenario {
        Scenario::Rest(args) => {
            report.scenario = "rest";
            scenarios::rest::run(deployment, args, &mut report).await?;
        }
        Scenario::Chat(args) => {
            report.scenario = "chat";
            scenarios::chat::run(deployment, args, &mut report).await?;
        }
        Scenario::Fanout(args) => {
            report.scenario = "fanout";
            scenarios::fanout::run(deployment, args, &mut report).await?;
        }
        Scenario::Groups(args) => {
            report.scenario = "groups";
            scenarios::groups::run(deployment, args, &mut report).await?;
        }
        Scenario::Idle(args) => {
            report.scenario = "idle";
            scenarios::idle::run(deployment, args, &mut report).await?;
        }
    }
    Ok(report)
}
