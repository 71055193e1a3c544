//! `ferry produce`: stdin to a topic, one message per line, through the batching producer so large inputs
//! go as a few big publishes. Every delivery is checked; any failure makes the command fail.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ferry_client::{Client, ClientError, DeliveryResult, Producer, ProducerConfig, ProducerRecord};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::io::AsyncBufReadExt;

use crate::args::ProduceArgs;

/// Size of the stdin buffer (bytes): big reads, few wake-ups.
const STDIN_BUFFER_BYTES: usize = 256 * 1024;

/// Counts deliveries and keeps the first failure.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub failed: u64,
    pub first_error: Option<ClientError>,
}

impl Tally {
    pub fn record(&mut self, result: DeliveryResult) {
        if let Err(err) = result {
            self.failed += 1;
            self.first_error.get_or_insert(err);
        }
    }

    /// An error describing the failures, if any.
    pub fn check(self) -> Result<()> {
        match self.first_error {
            None => Ok(()),
            Some(err) if self.failed == self.sent => Err(err.into()),
            Some(err) => bail!("{} of {} messages failed: {err}", self.failed, self.sent),
        }
    }
}

/// Runs `ferry produce`.
pub async fn run(client: Client, args: ProduceArgs) -> Result<()> {
    let separator = match args.key_separator.as_deref() {
        Some("") => bail!("--key-separator must not be empty"),
        other => other.map(|s| s.as_bytes().to_vec()),
    };
    let default_key = args.key.map(Bytes::from);
    // Fails now, with one clear error, when the topic or partition does not exist.
    let partitions = client.partition_count(&args.topic).await?;
    if let Some(partition) = args.partition {
        if partition >= partitions {
            return Err(ClientError::UnknownPartition {
                topic: args.topic.clone(),
                partition,
                partitions,
            }
            .into());
        }
    }
    let config = ProducerConfig {
        acks: args.acks.into(),
        compression: args.compression.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config)?;
    let mut stdin = tokio::io::BufReader::with_capacity(STDIN_BUFFER_BYTES, tokio::io::stdin());
    let mut line = Vec::new();
    let mut pending = FuturesUnordered::new();
    let mut tally = Tally::default();
    loop {
        line.clear();
        let read = stdin
            .read_until(b'\n', &mut line)
            .await
            .context("reading stdin")?;
        if read == 0 {
            break;
        }
        let (key, value) = split_line(&line, separator.as_deref(), default_key.as_ref());
        let record = ProducerRecord {
            topic: args.topic.clone(),
            key,
            value,
            headers: Vec::new(),
            partition: args.partition,
            timestamp_ms: None,
        };
        pending.push(producer.send(record).await);
        tally.sent += 1;
        // Collect what is already acknowledged so finished deliveries do not pile up.
        while let Some(Some(result)) = pending.next().now_or_never() {
            tally.record(result);
        }
    }
    producer.flush().await;
    while let Some(result) = pending.next().await {
        tally.record(result);
    }
    producer.close().await;
    let sent = tally.sent;
    tally.check()?;
    eprintln!("produced {sent} messages to {}", args.topic);
    Ok(())
}

/// Key and value of one input line: the line without its `\n` or `\r\n`, split at the first `separator`
/// when given and present; otherwise the whole line is the value and the key is `default_key`.
pub fn split_line(
    line: &[u8],
    separator: Option<&[u8]>,
    default_key: Option<&Bytes>,
) -> (Option<Bytes>, Bytes) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(separator) = separator {
        if let Some(at) = find(line, separator) {
            let key = Bytes::copy_from_slice(&line[..at]);
            let value = Bytes::copy_from_slice(&line[at + separator.len()..]);
            return (Some(key), value);
        }
    }
    (default_key.cloned(), Bytes::copy_from_slice(line))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str, sep: Option<&str>, key: Option<&str>) -> (Option<String>, String) {
        let key = key.map(|k| Bytes::from(k.to_owned()));
        let (k, v) = split_line(line.as_bytes(), sep.map(str::as_bytes), key.as_ref());
        (
            k.map(|k| String::from_utf8(k.to_vec()).unwrap()),
            String::from_utf8(v.to_vec()).unwrap(),
        )
    }

    #[test]
    fn strips_line_endings() {
        assert_eq!(split("hello\n", None, None), (None, "hello".into()));
        assert_eq!(split("hello\r\n", None, None), (None, "hello".into()));
        assert_eq!(split("last", None, None), (None, "last".into()));
        assert_eq!(split("\n", None, None), (None, "".into()));
    }

    #[test]
    fn splits_at_the_first_separator() {
        assert_eq!(
            split("user-1::a::b\n", Some("::"), None),
            (Some("user-1".into()), "a::b".into())
        );
        assert_eq!(
            split(":v\n", Some(":"), None),
            (Some("".into()), "v".into())
        );
    }

    #[test]
    fn lines_without_separator_use_the_default_key() {
        assert_eq!(split("plain\n", Some(":"), None), (None, "plain".into()));
        assert_eq!(
            split("plain\n", Some(":"), Some("k")),
            (Some("k".into()), "plain".into())
        );
        assert_eq!(
            split("x\n", None, Some("k")),
            (Some("k".into()), "x".into())
        );
    }

    #[test]
    fn tally_reports_partial_failure() {
        let mut tally = Tally {
            sent: 3,
            ..Default::default()
        };
        tally.record(Ok((0, 1)));
        tally.record(Err(ClientError::ProducerClosed));
        let err = tally.check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "1 of 3 messages failed: producer is closed"
        );
    }
}
