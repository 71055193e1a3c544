//! A producer service: publishes one order event per tick, keyed by customer so each customer's events stay
//! in order on one partition; idempotent (the default), so a retry after a lost answer is written once.
//! Stops cleanly on Ctrl-C or SIGTERM: `close()` sends what is buffered and waits for its acknowledgements.
//!
//!   ferryd &                          # a local broker on 127.0.0.1:7400
//!   ferry topic create orders --partitions 3
//!   cargo run -p ferry-client --example producer_service [-- BOOTSTRAP]

use std::time::Duration;

use ferry_client::{Client, Producer, ProducerConfig, ProducerRecord};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7400".into());
    let client = Client::connect(bootstrap.split(',').map(str::to_owned).collect()).await?;
    let producer = Producer::new(client, ProducerConfig::default())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let customer = format!("customer-{}", n % 10);
        let event = format!(r#"{{"order":{n},"customer":"{customer}","status":"paid"}}"#);
        let record = ProducerRecord::new("orders", event)
            .with_key(customer)
            .with_header("source", "producer_service");
        let delivery = producer.send(record).await;
        // Deliveries resolve in the background; this one is logged when it does.
        tokio::spawn(async move {
            match delivery.await {
                Ok((partition, offset)) => println!("order {n} stored at {partition}/{offset}"),
                Err(e) => eprintln!("order {n} failed: {e}"),
            }
        });
        n += 1;
    }
    // Graceful shutdown: nothing buffered is lost.
    producer.close().await;
    println!("sent {n} orders; producer closed");
    Ok(())
}
