//! `sagapayctl`: SagaPay's operator command line.
//!
//! ```text
//! sagapayctl dlq list   [--classification C] [--service S] [--event-type T] [--json]
//! sagapayctl dlq show   <partition:offset>
//! sagapayctl dlq replay <partition:offset> | --all [--classification C] [--service S] [--event-type T] [--dry-run]
//! sagapayctl reconcile [--since T] [--until T] [--settling-s N] [--json]
//! sagapayctl payments stuck [--limit N] [--json]
//! sagapayctl payments retry <payment id> [--by NAME]
//! sagapayctl payments fail <payment id> --reason "..." [--by NAME]
//! sagapayctl payments accept <payment id> --reason "..." [--by NAME]
//! sagapayctl merchant limit <merchant id or name> --max-in-flight N | --default [--by NAME]
//! sagapayctl merchant create <name> [--json]     (prints the merchant's first API key, once)
//! sagapayctl merchant list [--json]
//! sagapayctl key create <merchant id or name> [--json]   (prints the new key, once)
//! sagapayctl key list <merchant id or name> [--json]
//! sagapayctl key revoke <key_id>
//! sagapayctl operators create <name> --role admin|viewer   (the console's login; prints its password, once)
//! sagapayctl operators list | disable <name>
//! sagapayctl namespace drop --yes    (drops the namespace's six databases and its topics)
//! sagapayctl kafka acls [--operator NAME] [--apply]   (each service's ACLs; --apply creates them)
//! ```
//!
//! `--namespace` (or `SAGAPAY_NAMESPACE`, default `sagapay`), `--brokers` (or
//! `SAGAPAY_KAFKA_BROKERS`, default `127.0.0.1:9092`) and `--postgres-url` (or
//! `SAGAPAY_POSTGRES_URL`) choose the deployment; `payments` talks to the orchestrator
//! (`--orchestrator-url`, `SAGAPAY_ORCHESTRATOR_URL`) with the ops key (`SAGAPAY_OPS_KEY`).

use clap::{Args, Parser, Subcommand};
use sagapay_domain::Namespace;
use sagapay_gateway::keys;
use sagapay_messaging::KafkaSettings;
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
    /// PostgreSQL server URL, without a database (the services' setting).
    #[arg(
        long,
        env = "SAGAPAY_POSTGRES_URL",
        default_value = "postgres://sagapay:sagapay@127.0.0.1:5432",
        global = true
    )]
    postgres_url: String,
    /// The orchestrator, for `payments`.
    #[arg(
        long,
        env = "SAGAPAY_ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:8001",
        global = true
    )]
    orchestrator_url: String,
    /// The ops key, for `payments`.
    #[arg(
        long,
        env = "SAGAPAY_OPS_KEY",
        default_value = "dev-ops-secret",
        hide_default_value = true,
        global = true
    )]
    ops_key: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dead letters: inspect and replay.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Compare the provider's books, the payments and the ledger; exit 1 on any difference.
    Reconcile {
        /// Payments created from (RFC 3339; default: the beginning).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Payments created before (RFC 3339; default: now, less the settling margin).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Leave out payments created in the last N seconds (they may still be moving).
        #[arg(long, default_value_t = 60)]
        settling_s: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Payments that stopped moving: list, retry, fail.
    #[command(subcommand)]
    Payments(PaymentsCommand),
    /// Merchants of the gateway.
    #[command(subcommand)]
    Merchant(MerchantCommand),
    /// API keys of merchants. A key is shown once, when it is created.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The whole namespace (`--namespace`): its six databases and its Kafka topics.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Operators of the console: their accounts (a password is shown once, when made).
    #[command(subcommand)]
    Operators(OperatorsCommand),
    /// Webhook deliveries: what was sent where, with the last answer; send one again.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Every setting of every service, as the Markdown of `docs/configuration.md`.
    Settings,
    /// Service identity keys (the Ed25519 keys services sign their calls to each other with).
    #[command(subcommand)]
    ServiceKey(ServiceKeyCommand),
    /// The Kafka cluster's access rules.
    #[command(subcommand)]
    Kafka(KafkaCommand),
}

#[derive(Subcommand)]
enum KafkaCommand {
    /// The ACLs of the namespace: each service may write only where its events go and read
    /// only its own channel (its user name is its name); the operator reads dead letters and
    /// replays them. With `--apply`, creates them (connect as a super user of the cluster).
    Acls {
        /// The user `sagapayctl` connects as for dead letters.
        #[arg(long, default_value = "sagapayctl")]
        operator: String,
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand)]
enum ServiceKeyCommand {
    /// A new key pair for `service`: the private key (its SAGAPAY_SERVICE_SIGNING_KEY, shown
    /// once) and the public key its receivers list in SAGAPAY_TRUSTED_CALLERS.
    Generate { service: String },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// The newest deliveries, with their status, attempts and last answer.
    Deliveries {
        #[arg(long)]
        endpoint: Option<uuid::Uuid>,
        #[arg(long)]
        merchant: Option<uuid::Uuid>,
        /// pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again now (the receiver sees the same event id again).
    Resend { delivery_id: uuid::Uuid },
}

#[derive(Subcommand)]
enum PaymentsCommand {
    /// Payments and refunds past their deadline or needing attention, with state and age.
    Stuck {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Send a payment's outstanding step (and its refunds' in flight) again now.
    Retry {
        payment_id: uuid::Uuid,
        /// Who asks (recorded in the payment's timeline).
        #[arg(long, default_value = "sagapayctl")]
        by: String,
    },
    /// End a payment as the saga would: fail it before a risk decision, void an
    /// authorization, refund a capture (of another amount: exactly what the provider took).
    Fail {
        payment_id: uuid::Uuid,
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "sagapayctl")]
        by: String,
    },
    /// Keep a capture the provider made of another amount than was asked: the payment is
    /// posted for what was captured and settles.
    Accept {
        payment_id: uuid::Uuid,
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "sagapayctl")]
        by: String,
    },
}

#[derive(Subcommand)]
enum OperatorsCommand {
    /// An operator of the console, with a new password printed once (only its hash is kept).
    Create {
        name: String,
        /// admin (sees and acts) or viewer (sees).
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Every operator.
    List,
    /// No more logins, and the operator's sessions end now.
    Disable { name: String },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Drops the namespace's databases and topics, with everything in them (a load-test run's
    /// namespace, say). Open connections to its databases are terminated.
    Drop {
        /// Required: this deletes data.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum MerchantCommand {
    /// Create a merchant and its first API key.
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// A merchant's own share of admission control: at most N of its payments in flight
    /// (0: no limit of its own), or the default share again.
    Limit {
        /// Merchant id or name.
        merchant: String,
        #[arg(long, conflicts_with = "default", required_unless_present = "default")]
        max_in_flight: Option<u32>,
        #[arg(long)]
        default: bool,
        #[arg(long, default_value = "sagapayctl")]
        by: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Add an API key to a merchant (keys can overlap, to rotate without downtime).
    Create {
        /// Merchant id or name.
        merchant: String,
        #[arg(long)]
        json: bool,
    },
    /// A merchant's keys (prefix, created, revoked), never the keys themselves.
    List {
        /// Merchant id or name.
        merchant: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it is refused from the next request on.
    Revoke { key_id: uuid::Uuid },
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
    Filter::parse(
        args.classification.as_deref(),
        args.service.as_deref(),
        args.event_type.as_deref(),
        position.as_deref(),
    )
}

fn print_new_key(key: &keys::NewKey) {
    println!("key id  {}", key.key_id);
    println!("API key {}", key.secret);
    eprintln!("Store the API key now: only its hash is kept, it cannot be shown again.");
}

fn print_stuck(stuck: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    println!(
        "{:<36} {:<10} {:<18} {:>8} {:>8} {:>6}  WHY",
        "PAYMENT ID", "KIND", "STATE", "AGE S", "OVERDUE", "NUDGES"
    );
    let empty = Vec::new();
    for (kind, rows) in [
        ("payment", &stuck["payments"]),
        ("refund", &stuck["refunds"]),
    ] {
        for r in rows.as_array().unwrap_or(&empty) {
            let state = match kind {
                "refund" => format!("{} {}", text(&r["status"]), text(&r["refund_id"])),
                _ => match r["compensation"].as_str() {
                    Some(c) => format!("{} ({c})", text(&r["status"])),
                    None => text(&r["status"]),
                },
            };
            println!(
                "{:<36} {:<10} {:<18} {:>8} {:>8} {:>6}  {}",
                text(&r["payment_id"]),
                kind,
                state,
                r["age_seconds"],
                r["overdue_seconds"],
                r["nudges"],
                r["attention_reason"]
                    .as_str()
                    .unwrap_or("past its deadline")
            );
        }
    }
}

fn print_table(entries: &[dlq::Entry]) {
    println!(
        "{:<10} {:<27} {:<16} {:<17} {:<29} {:<36} {:<8} ERROR",
        "POSITION", "FAILED AT", "CLASSIFICATION", "SERVICE", "EVENT TYPE", "EVENT ID", "SQLSTATE"
    );
    for e in entries {
        let l = &e.letter;
        let error: String = l.error.chars().take(80).collect();
        println!(
            "{:<10} {:<27} {:<16} {:<17} {:<29} {:<36} {:<8} {}",
            e.position,
            l.failed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            l.classification.as_str(),
            l.failing_service,
            l.event_type.as_deref().unwrap_or("-"),
            l.event_id.as_deref().unwrap_or("-"),
            l.sqlstate.as_deref().unwrap_or("-"),
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

/// Who runs this command, for the console's record of operators' actions.
fn who() -> String {
    format!(
        "sagapayctl:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// `sagapayctl operators`: the console's accounts, in its database.
async fn operators(
    postgres_url: &str,
    ns: &Namespace,
    command: &OperatorsCommand,
) -> anyhow::Result<()> {
    use sagapay_console::operators::{self, Role};
    let pool = sagapay_console::database(postgres_url, ns).await?;
    match command {
        OperatorsCommand::Create { name, role } => {
            let role = Role::parse(role)?;
            let password = sagapay_console::audit::record(
                &pool,
                &who(),
                "operator.create",
                name,
                role.as_str(),
                operators::create(&pool, name, role),
                |_| "created".to_owned(),
            )
            .await?;
            println!(
                "operator {name} ({}): its password, shown once:",
                role.as_str()
            );
            println!("{password}");
        }
        OperatorsCommand::List => {
            println!(
                "{:<24} {:<7} {:<24} DISABLED AT",
                "NAME", "ROLE", "CREATED AT"
            );
            for o in operators::list(&pool).await? {
                let at = |t: chrono::DateTime<chrono::Utc>| {
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                };
                println!(
                    "{:<24} {:<7} {:<24} {}",
                    o.name,
                    o.role.as_str(),
                    at(o.created_at),
                    o.disabled_at.map(at).unwrap_or_else(|| "-".into())
                );
            }
        }
        OperatorsCommand::Disable { name } => {
            sagapay_console::audit::record(
                &pool,
                &who(),
                "operator.disable",
                name,
                "",
                operators::disable(&pool, name),
                |()| "disabled".to_owned(),
            )
            .await?;
            println!("operator {name} disabled: no login, its sessions ended");
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Settings = cli.command {
        print!("{}", sagapay_service_kit::settings::markdown());
        return Ok(());
    }
    if let Command::ServiceKey(ServiceKeyCommand::Generate { service }) = &cli.command {
        let (private, public) = sagapay_service_kit::service_auth::generate_key_pair()?;
        println!("# {service}: keep the private key secret (it is shown once).");
        println!("SAGAPAY_SERVICE_SIGNING_KEY={private}");
        println!("# Its receivers trust it with (add it beside the old key while rotating):");
        println!("SAGAPAY_TRUSTED_CALLERS={service}={public}");
        return Ok(());
    }
    let ns = Namespace::parse(&cli.namespace)?;
    if let Command::Operators(command) = &cli.command {
        return operators(&cli.postgres_url, &ns, command).await;
    }
    let kafka = KafkaSettings {
        brokers: cli.brokers.clone(),
        // The services' connection security, when the cluster needs it (the SASL password
        // from its file too).
        client_overrides: sagapay_service_kit::config::kafka_client_overrides()?,
        ..KafkaSettings::default()
    };
    let gateway_db = || async {
        sqlx::PgPool::connect(&sagapay_messaging::postgres_url::with_database(
            &cli.postgres_url,
            &ns.database("gateway"),
        ))
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the gateway database: {e}"))
    };
    let notification_db = || async {
        sqlx::PgPool::connect(&sagapay_messaging::postgres_url::with_database(
            &cli.postgres_url,
            &ns.database("notification"),
        ))
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the notification database: {e}"))
    };
    if let Command::Webhooks(command) = &cli.command {
        use sagapay_notification::ops;
        let pool = notification_db().await?;
        match command {
            WebhooksCommand::Deliveries {
                endpoint,
                merchant,
                status,
                limit,
                json,
            } => {
                if let Some(s) = status {
                    anyhow::ensure!(
                        ["pending", "delivered", "failed"]
                            .contains(&s.to_ascii_lowercase().as_str()),
                        "--status is pending, delivered or failed"
                    );
                }
                let rows = ops::list(
                    &pool,
                    &ops::Filter {
                        endpoint_id: *endpoint,
                        merchant_id: *merchant,
                        status: status.clone(),
                        limit: *limit,
                    },
                )
                .await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    println!(
                        "{:<36} {:<36} {:<18} {:<9} {:>3} {:>4} {:>7}  URL / LAST ERROR",
                        "DELIVERY", "EVENT", "TYPE", "STATUS", "TRY", "CODE", "MS"
                    );
                    for d in &rows {
                        println!(
                            "{:<36} {:<36} {:<18} {:<9} {:>3} {:>4} {:>7}  {} {}",
                            d.delivery_id,
                            d.event_id,
                            d.event_type,
                            d.status,
                            d.attempts,
                            d.last_status_code
                                .map(|c| c.to_string())
                                .unwrap_or_default(),
                            d.last_latency_ms.map(|c| c.to_string()).unwrap_or_default(),
                            d.url,
                            d.last_error.as_deref().unwrap_or(""),
                        );
                    }
                }
            }
            WebhooksCommand::Resend { delivery_id } => {
                anyhow::ensure!(
                    ops::resend(&pool, *delivery_id).await?,
                    "no delivery {delivery_id} to an endpoint that still exists"
                );
                println!("delivery {delivery_id} will be sent again now");
            }
        }
        return Ok(());
    }
    if let Command::Reconcile {
        since,
        until,
        settling_s,
        json,
    } = &cli.command
    {
        let report = sagapayctl::reconcile::run(
            &sagapayctl::reconcile::Databases::of(&cli.postgres_url, &ns),
            &sagapayctl::reconcile::Window {
                since: *since,
                until: *until,
                settling: std::time::Duration::from_secs(*settling_s),
            },
        )
        .await?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for d in &report.differences {
                println!("{}  {:<24} {}", d.payment_id, d.kind, d.problem);
            }
            println!(
                "payments created before {}: {} checked, {} still moving; {} provider operations, \
                 {} postings, {} refunds: {} difference(s)",
                report
                    .until
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                report.payments_checked,
                report.in_flight,
                report.provider_operations_checked,
                report.postings_checked,
                report.refunds_checked,
                report.differences.len()
            );
        }
        anyhow::ensure!(
            report.differences.is_empty(),
            "the provider, the payments and the ledger disagree"
        );
        return Ok(());
    }
    let ops = sagapayctl::payments::Ops {
        orchestrator_url: cli.orchestrator_url.trim_end_matches('/').to_owned(),
        ops_key: cli.ops_key.clone(),
    };
    match cli.command {
        Command::Reconcile { .. }
        | Command::Operators(_)
        | Command::Webhooks(_)
        | Command::Settings
        | Command::ServiceKey(_) => {
            unreachable!("handled above")
        }
        Command::Payments(PaymentsCommand::Stuck { limit, json }) => {
            let stuck = ops.stuck(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stuck)?);
            } else {
                print_stuck(&stuck);
            }
        }
        Command::Payments(PaymentsCommand::Retry { payment_id, by }) => {
            let done = ops.retry(payment_id, &by).await?;
            println!(
                "payment {payment_id} ({}): sent again {}",
                done["status"].as_str().unwrap_or("?"),
                done["sent"]
            );
        }
        Command::Payments(PaymentsCommand::Fail {
            payment_id,
            reason,
            by,
        }) => {
            let done = ops.fail(payment_id, &reason, &by).await?;
            println!(
                "payment {payment_id} ({}): {} ({})",
                done["status"].as_str().unwrap_or("?"),
                done["action"].as_str().unwrap_or("?"),
                done["sent"]
            );
        }
        Command::Payments(PaymentsCommand::Accept {
            payment_id,
            reason,
            by,
        }) => {
            let done = ops.accept(payment_id, &reason, &by).await?;
            println!(
                "payment {payment_id} ({}): accepted ({})",
                done["status"].as_str().unwrap_or("?"),
                done["sent"]
            );
        }
        Command::Merchant(MerchantCommand::Limit {
            merchant,
            max_in_flight,
            default: _,
            by,
        }) => {
            let merchant = keys::find_merchant(&gateway_db().await?, &merchant).await?;
            let limits = ops
                .set_merchant_limit(merchant.merchant_id, max_in_flight, &by)
                .await?;
            println!(
                "merchant {} ({}): at most {} payments in flight ({} now)",
                merchant.merchant_id,
                merchant.name,
                match limits["max_in_flight"].as_i64() {
                    Some(0) => "unlimited by its own share:".to_owned(),
                    Some(n) => n.to_string(),
                    None => format!("{} (the default share)", limits["default_max_in_flight"]),
                },
                limits["in_flight"]
            );
        }
        Command::Namespace(NamespaceCommand::Drop { yes }) => {
            anyhow::ensure!(
                yes,
                "dropping namespace {ns} deletes its databases and topics: add --yes"
            );
            sagapay_service_kit::drop_namespace(&cli.postgres_url, &kafka, &ns).await?;
            println!("dropped namespace {ns}: its databases and topics");
        }
        Command::Merchant(MerchantCommand::Create { name, json }) => {
            let (merchant, key) = keys::create_merchant(&gateway_db().await?, &name).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"merchant": merchant, "key": key})
                    )?
                );
            } else {
                println!("merchant {} ({})", merchant.merchant_id, merchant.name);
                print_new_key(&key);
            }
        }
        Command::Merchant(MerchantCommand::List { json }) => {
            let merchants = keys::list_merchants(&gateway_db().await?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&merchants)?);
            } else {
                println!("{:<36} {:<24} NAME", "MERCHANT ID", "CREATED AT");
                for m in &merchants {
                    println!(
                        "{:<36} {:<24} {}",
                        m.merchant_id,
                        m.created_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        m.name
                    );
                }
            }
        }
        Command::Key(KeyCommand::Create { merchant, json }) => {
            let pool = gateway_db().await?;
            let merchant = keys::find_merchant(&pool, &merchant).await?;
            let key = keys::create_key(&pool, merchant.merchant_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&key)?);
            } else {
                print_new_key(&key);
            }
        }
        Command::Key(KeyCommand::List { merchant, json }) => {
            let pool = gateway_db().await?;
            let merchant = keys::find_merchant(&pool, &merchant).await?;
            let list = keys::list_keys(&pool, merchant.merchant_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<36} {:<10} {:<24} REVOKED AT",
                    "KEY ID", "PREFIX", "CREATED AT"
                );
                for k in &list {
                    let at = |t: chrono::DateTime<chrono::Utc>| {
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    };
                    println!(
                        "{:<36} {:<10} {:<24} {}",
                        k.key_id,
                        k.key_prefix,
                        at(k.created_at),
                        k.revoked_at.map(at).unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        Command::Key(KeyCommand::Revoke { key_id }) => {
            let key = keys::revoke_key(&gateway_db().await?, key_id).await?;
            println!(
                "key {} ({}…) of merchant {} revoked at {}",
                key.key_id,
                key.key_prefix,
                key.merchant_id,
                key.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            );
        }
        Command::Kafka(KafkaCommand::Acls { operator, apply }) => {
            let grants = sagapayctl::acls::grants(&ns, &operator);
            for g in &grants {
                println!("{g}");
            }
            if apply {
                sagapay_messaging::acl::apply(&kafka, &grants).await?;
                eprintln!("{} ACL(s) applied", grants.len());
            }
        }
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
