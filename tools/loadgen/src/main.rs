//! `loadgen`: publishes a deterministic workload (see the library crate) through the real
//! serializer and registry, and writes the results the pipeline must produce as JSON.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use backbone_core::schema_registry::RegistryArgs;
use backbone_loadgen::{Destinations, LoadSpec, Workload};
use backbone_schemas::WireCodec;
use clap::Parser;
use rdkafka::producer::FutureProducer;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Publishes deterministic usage load with master data and writes the expected results"
)]
struct Args {
    /// Broker to publish to.
    #[arg(
        long,
        env = "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// Schema registry to register the contracts with.
    #[command(flatten)]
    registry: RegistryArgs,
    /// Seed: the same seed publishes the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tenant of every record.
    #[arg(long, default_value = "acme")]
    tenant: String,
    /// Customers (an account and a subscription each).
    #[arg(long, default_value_t = 100)]
    customers: usize,
    /// Plans (a rate card each).
    #[arg(long, default_value_t = 3)]
    plans: usize,
    /// Usage records to publish, duplicates and poison included.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Usage records per second; 0 publishes as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// How long the producer waits to fill a batch (`linger.ms`). A steady `--rate` costs the
    /// broker less with a longer wait, as a processor's 30 ms (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// Share of records that repeat an earlier event (0 to 1).
    #[arg(long, default_value_t = 0.02)]
    duplicates: f64,
    /// Share of events a few hours late.
    #[arg(long, default_value_t = 0.05)]
    late: f64,
    /// Share of events outside the lateness window.
    #[arg(long, default_value_t = 0.005)]
    out_of_window: f64,
    /// Share of poison records.
    #[arg(long, default_value_t = 0.01)]
    poison: f64,
    /// Where to write the expected results (JSON).
    #[arg(long, default_value = "expected.json")]
    expected: PathBuf,
    /// Raw usage topic.
    #[arg(long, default_value = "usage.events")]
    usage_topic: String,
    /// Customer accounts topic.
    #[arg(long, default_value = "master.customer-accounts")]
    accounts_topic: String,
    /// Subscriptions topic.
    #[arg(long, default_value = "master.subscriptions")]
    subscriptions_topic: String,
    /// Rate cards topic.
    #[arg(long, default_value = "master.rate-cards")]
    rate_cards_topic: String,
    /// GL mappings topic.
    #[arg(long, default_value = "master.gl-mappings")]
    gl_mappings_topic: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    for (name, share) in [
        ("--duplicates", args.duplicates),
        ("--late", args.late),
        ("--out-of-window", args.out_of_window),
        ("--poison", args.poison),
    ] {
        if !(0.0..=1.0).contains(&share) {
            bail!("{name} {share}: expected a share between 0 and 1");
        }
    }
    let now_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_micros();
    let spec = LoadSpec {
        seed: args.seed,
        tenant: args.tenant.clone(),
        customers: args.customers,
        plans: args.plans,
        events: args.events,
        duplicate_share: args.duplicates,
        late_share: args.late,
        out_of_window_share: args.out_of_window,
        poison_share: args.poison,
        now_micros: i64::try_from(now_micros).context("clock out of range")?,
    };
    let workload = Workload::generate(&spec);
    let mut kafka = backbone_core::connect::tool_cluster(&args.bootstrap_servers).await?;
    kafka
        .producer_properties
        .insert("linger.ms".to_owned(), args.linger_ms.to_string());
    let producer: FutureProducer = kafka
        .producer_config()
        .create()
        .context("creating the producer")?;
    let codec = WireCodec::new(args.registry.access()?);

    let started = Instant::now();
    workload
        .publish(
            &producer,
            &codec,
            Destinations {
                usage: &args.usage_topic,
                accounts: &args.accounts_topic,
                subscriptions: &args.subscriptions_topic,
                rate_cards: &args.rate_cards_topic,
                gl_mappings: &args.gl_mappings_topic,
            },
            args.rate,
        )
        .await?;
    let elapsed = started.elapsed();

    let json = serde_json::to_string_pretty(&workload.expected)
        .context("encoding the expected results")?;
    std::fs::write(&args.expected, json)
        .with_context(|| format!("writing {}", args.expected.display()))?;
    println!(
        "loadgen: {} usage records to {} in {:.1}s ({:.0}/s); {} customers, {} plans; expected results in {}",
        workload.usage.len(),
        args.usage_topic,
        elapsed.as_secs_f64(),
        workload.usage.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        workload.accounts.len(),
        workload.rate_cards.len(),
        args.expected.display()
    );
    Ok(())
}
