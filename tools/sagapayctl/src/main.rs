//! `sagapayctl`: SagaPay's operator command line.
//!
//! ```text
//! sagapayctl dlq list   [--classification C] [--service S] [--event-type T] [--json]
//! sagapayctl dlq show   <partition:offset>
//! sagapayctl dlq replay <partition:offset> | --all [--classification C] [--service S] [--event-type T] [--dry-run]
//! sagapayctl reconcile [--postgres-url URL] [--json]
//! ```
//!
//! `--namespace` (or `SAGAPAY_NAMESPACE`, default `sagapay`) and `--brokers` (or
//! `SAGAPAY_KAFKA_BROKERS`, default `127.0.0.1:9092`) choose the deployment.

use clap::{Args, Parser, Subcommand};
use sagapay_domain::Namespace;
use sagapay_messaging::{Classification, KafkaSettings};
use sagapayctl::dlq::{self, Filter};

#[derive(Parser)]
#[command(name = "sagapayctl", about = "Operate SagaPay")]
struct Cli {
    #[arg(
        long,
        env = "SAGAPAY_NAMESPACE",
        default_value = "sagapay",
        global = true
    )]
    namespace: String,
    #[arg(
        long,
        env = "SAGAPAY_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dead letters: inspect and replay.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Check every settled payment against the ledger; exit 1 when anything differs.
    Reconcile {
        /// PostgreSQL server URL, without a database (the services' setting).
        #[arg(
            long,
            env = "SAGAPAY_POSTGRES_URL",
            default_value = "postgres://sagapay:sagapay@127.0.0.1:5432"
        )]
        postgres_url: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct FilterArgs {
    /// NON_RETRYABLE or RETRY_EXHAUSTED.
    #[arg(long)]
    classification: Option<String>,
    /// The service that failed to process the message.
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    event_type: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full.
    Show { position: String },
    /// Publish dead letters again to their original topic, with their original event_id.
    Replay {
        /// One dead letter (`partition:offset`, as `list` prints it).
        position: Option<String>,
        /// Every dead letter that matches the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Say what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn filter(args: &FilterArgs, position: Option<String>) -> anyhow::Result<Filter> {
    let classification = match args.classification.as_deref() {
        None => None,
        Some("NON_RETRYABLE") => Some(Classification::NonRetryable),
        Some("RETRY_EXHAUSTED") => Some(Classification::RetryExhausted),
        Some(other) => {
            anyhow::bail!("unknown classification {other:?}: NON_RETRYABLE or RETRY_EXHAUSTED")
        }
    };
    Ok(Filter {
        classification,
        service: args.service.clone(),
        event_type: args.event_type.clone(),
        position,
    })
}

fn print_table(entries: &[dlq::Entry]) {
    println!(
        "{:<10} {:<27} {:<16} {:<17} {:<29} {:<36} ERROR",
        "POSITION", "FAILED AT", "CLASSIFICATION", "SERVICE", "EVENT TYPE", "EVENT ID"
    );
    for e in entries {
        let l = &e.letter;
        let error: String = l.error.chars().take(80).collect();
        println!(
            "{:<10} {:<27} {:<16} {:<17} {:<29} {:<36} {}",
            e.position,
            l.failed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            l.classification.as_str(),
            l.failing_service,
            l.event_type.as_deref().unwrap_or("-"),
            l.event_id.as_deref().unwrap_or("-"),
            error
        );
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ns = Namespace::parse(&cli.namespace)?;
    let kafka = KafkaSettings {
        brokers: cli.brokers.clone(),
        ..KafkaSettings::default()
    };
    if let Command::Reconcile { postgres_url, json } = &cli.command {
        let base = postgres_url.trim_end_matches('/');
        let report = sagapayctl::reconcile::run(
            &format!("{base}/{}", ns.database("orchestrator")),
            &format!("{base}/{}", ns.database("ledger")),
        )
        .await?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for d in &report.differences {
                println!("{}  {}", d.payment_id, d.problem);
            }
            println!(
                "{} payments, {} postings, {} refunds checked: {} difference(s)",
                report.payments_checked,
                report.postings_checked,
                report.refunds_checked,
                report.differences.len()
            );
        }
        anyhow::ensure!(
            report.differences.is_empty(),
            "the ledger and the payments disagree"
        );
        return Ok(());
    }
    match cli.command {
        Command::Reconcile { .. } => unreachable!("handled above"),
        Command::Dlq(DlqCommand::List { filter: f, json }) => {
            let f = filter(&f, None)?;
            let entries: Vec<_> = dlq::read_all(&kafka, &ns)
                .await?
                .into_iter()
                .filter(|e| f.matches(e))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print_table(&entries);
                eprintln!("{} dead letter(s)", entries.len());
            }
        }
        Command::Dlq(DlqCommand::Show { position }) => {
            let entry = dlq::read_all(&kafka, &ns)
                .await?
                .into_iter()
                .find(|e| e.position == position)
                .ok_or_else(|| anyhow::anyhow!("no dead letter at {position}"))?;
            println!("{}", serde_json::to_string_pretty(&entry)?);
        }
        Command::Dlq(DlqCommand::Replay {
            position,
            all,
            filter: f,
            dry_run,
        }) => {
            anyhow::ensure!(
                position.is_some() != all,
                "name one dead letter (partition:offset) or pass --all"
            );
            let f = filter(&f, position)?;
            let entries: Vec<_> = dlq::read_all(&kafka, &ns)
                .await?
                .into_iter()
                .filter(|e| f.matches(e))
                .collect();
            anyhow::ensure!(!entries.is_empty(), "no dead letter matches");
            for e in &entries {
                println!(
                    "{} {} {} -> {}",
                    if dry_run { "would replay" } else { "replaying" },
                    e.position,
                    e.letter.event_id.as_deref().unwrap_or("-"),
                    e.letter.original_topic
                );
            }
            let n = dlq::replay(&kafka, &entries, dry_run).await?;
            eprintln!(
                "{n} dead letter(s) {}",
                if dry_run {
                    "would be replayed"
                } else {
                    "replayed"
                }
            );
        }
    }
    Ok(())
}
