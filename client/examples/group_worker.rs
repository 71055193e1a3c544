//! A consumer-group worker: run several copies and they share the topic's partitions; kill one and the
//! others take its partitions over from the last committed offsets. Give each copy a stable instance id
//! (its pod name) and a restarted copy gets its own partitions back without disturbing the others.
//! Records are handled inside a span that continues the producer's trace (`traceparent` header).
//! Ctrl-C or SIGTERM: commits what was handled and leaves.
//!
//!   cargo run -p ferry-client --example group_worker [-- BOOTSTRAP [INSTANCE_ID]]

use ferry_client::trace::consume_span;
use ferry_client::{Client, GroupConfig, GroupConsumer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let client = Client::connect(bootstrap.split(',').map(str::to_owned).collect()).await?;
    let mut config = GroupConfig::new("order-workers", vec!["orders".into()]);
    config.instance_id = args.next();
    let mut consumer = GroupConsumer::join(client, config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut handled = 0u64;
    loop {
        let record = tokio::select! {
            r = consumer.next_record() => r,
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
        };
        let Some(record) = record else { break };
        let record = record?;
        let _span = consume_span(&record).entered();
        // The work. Automatic commit covers only records returned by next_record: at-least-once.
        println!(
            "{}/{}@{}: {}",
            record.topic,
            record.partition,
            record.offset,
            String::from_utf8_lossy(&record.value)
        );
        handled += 1;
        if handled.is_multiple_of(1000) {
            println!("assignment now: {:?}", consumer.assignment());
        }
    }
    consumer.close().await;
    println!("handled {handled} records; left the group");
    Ok(())
}
