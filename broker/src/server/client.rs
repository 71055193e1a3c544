//! The `ferry.v1.Ferry` service: publish, fetch, subscribe, metadata.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchBuilder, Records};
use ferry_protocol::limits::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use ferry_protocol::partitioner::partition_for_key;
use ferry_protocol::v1::{self, ferry_server::Ferry, publish_request::Payload};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::{Auth, Principal};
use super::status::to_status;
use super::via::Via;
use super::views::{brokers, topic_info};
use crate::acl::{Operation, ResourceType};
use crate::broker::{Broker, BrokerError};
use crate::quota::QuotaKind;
use crate::replica::Durability;
use crate::replica::Replica;

/// Default bytes of a fetch response when the request says 0.
const FETCH_BYTES_DEFAULT: u32 = 1024 * 1024;
/// Longest a subscribe stream waits for new data before checking that its client is still there (ms).
const SUBSCRIBE_POLL_MS: u64 = 1_000;
/// Responses a subscribe stream buffers ahead of its client.
const SUBSCRIBE_BUFFER: usize = 8;
/// Longest a read waits for its leader to confirm its lease (a heartbeat round to a quorum).
const READ_LEASE_WAIT: Duration = Duration::from_secs(1);

/// The client service.
#[derive(Debug)]
pub struct ClientService {
    broker: Arc<Broker>,
    /// The listener it serves: which broker addresses its clients are told.
    via: Via,
    /// Who each request is from, and what it may do.
    auth: Auth,
    round_robin: AtomicU64,
}

impl ClientService {
    /// The principal of `req`, refused unless it may do `op` on topic `topic` (checked before the topic is
    /// looked up: a refusal never says whether it exists).
    fn topic_principal<T>(
        &self,
        req: &Request<T>,
        op: Operation,
        topic: &str,
    ) -> Result<Principal, Status> {
        // A bad name is bad input whoever asks: INVALID_ARGUMENT before any authorization.
        check_topic(topic)?;
        let p = self.auth.principal(req)?;
        self.auth
            .check(&self.broker, &p, op, ResourceType::Topic, topic)?;
        Ok(p)
    }

    /// The principal of `req`, refused unless it may do `op` on group `group` and read each of `topics`.
    fn group_principal<'a, T>(
        &self,
        req: &Request<T>,
        op: Operation,
        group: &str,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<Principal, Status> {
        let p = self.auth.principal(req)?;
        self.auth
            .check(&self.broker, &p, op, ResourceType::Group, group)?;
        for t in topics {
            self.auth
                .check(&self.broker, &p, Operation::Read, ResourceType::Topic, t)?;
        }
        Ok(p)
    }

    /// A broker error as this listener's clients get it.
    fn status(&self, e: BrokerError) -> Status {
        self.via.status(&self.broker, e)
    }

    /// What fetch and subscribe check first: the topic name, the format, the partition's replica here, and
    /// the byte limit of one response.
    fn read_target(
        &self,
        topic: &str,
        partition: u32,
        format: i32,
        max_bytes: u32,
    ) -> Result<(Replica, v1::Format, u32), Status> {
        check_topic(topic)?;
        let format = check_format(format)?;
        let replica = self
            .broker
            .partition(topic, partition)
            .map_err(|e| self.status(e))?;
        Ok((replica, format, fetch_bytes(max_bytes)))
    }

    /// The service over `broker`.
    pub fn new(broker: Arc<Broker>, via: Via, auth: Auth) -> Self {
        ClientService {
            broker,
            via,
            auth,
            round_robin: AtomicU64::new(0),
        }
    }
}

/// The byte limit of a fetch: the default for 0, capped at the protocol limit.
fn fetch_bytes(requested: u32) -> u32 {
    match requested {
        0 => FETCH_BYTES_DEFAULT,
        n => n.min(FETCH_BYTES_MAX),
    }
}

fn durability(acks: i32) -> Result<Durability, Status> {
    match v1::Acks::try_from(acks) {
        Ok(v1::Acks::All) => Ok(Durability::Quorum),
        Ok(v1::Acks::Leader) => Ok(Durability::Leader),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown acks value {acks}"
        ))),
    }
}

fn check_format(f: i32) -> Result<v1::Format, Status> {
    v1::Format::try_from(f)
        .map_err(|_| Status::invalid_argument(format!("unknown format value {f}")))
}

fn check_topic(name: &str) -> Result<(), Status> {
    ferry_protocol::topic::validate_topic_name(name)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Builds one batch per partition from plain records; a record without a timestamp gets `now` (ms).
fn batches_from_records(
    records: Vec<v1::Record>,
    now: i64,
    place: impl Fn(&v1::Record) -> u32,
) -> BTreeMap<u32, Bytes> {
    let mut builders: BTreeMap<u32, BatchBuilder> = BTreeMap::new();
    for r in &records {
        let p = place(r);
        let ts = if r.timestamp_ms == 0 {
            now
        } else {
            r.timestamp_ms
        };
        // Sized by what each partition gets, not 16 KiB up front: a request of keys spread over ten
        // thousand partitions must not cost ten thousand buffers (H7 in the durability audit).
        let b = builders
            .entry(p)
            .or_insert_with(|| BatchBuilder::with_capacity(ts, 0));
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|h| (h.key.as_str(), &h.value[..]))
            .collect();
        let key = (r.has_key || !r.key.is_empty()).then_some(&r.key[..]);
        b.push(ts, key, &r.value, &headers);
    }
    builders.into_iter().map(|(p, b)| (p, b.finish())).collect()
}

/// Bytes a decoded record counts for in a Records-format response besides its key, value and headers
/// (its fields and protobuf framing, rounded up).
const RECORD_OVERHEAD_BYTES: usize = 48;

/// Decodes fetched batches into plain records, from `offset` on, until the records decoded would pass
/// `max_bytes` (at least one record when there is one): compressed batches are counted by what they
/// decompress to, so a small stored response cannot become gigabytes of records (C2 in the durability
/// audit), and one batch of many small records is served in parts rather than never (L4). Answers the
/// records and the offset after the last one.
fn to_records(
    partition: u32,
    offset: u64,
    batches: &[Bytes],
    max_bytes: u32,
) -> Result<(Vec<v1::Record>, u64), Status> {
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut next = offset;
    for b in batches {
        let h = batch::validate(b).map_err(|e| Status::data_loss(e.to_string()))?;
        for r in Records::new(b.clone(), h) {
            let r = r.map_err(|e| Status::data_loss(e.to_string()))?;
            if r.offset < offset {
                continue;
            }
            let size = RECORD_OVERHEAD_BYTES
                + r.key.as_ref().map_or(0, Bytes::len)
                + r.value.len()
                + r.headers
                    .iter()
                    .map(|h| h.key.len() + h.value.len() + 8)
                    .sum::<usize>();
            if !out.is_empty() && total + size > max_bytes as usize {
                return Ok((out, next));
            }
            total += size;
            next = r.offset + 1;
            out.push(v1::Record {
                has_key: r.key.is_some(),
                key: r.key.unwrap_or_default(),
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| v1::Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
                timestamp_ms: r.timestamp_ms,
                offset: r.offset,
                partition,
            });
        }
        next = next.max(h.next_offset());
    }
    Ok((out, next))
}

fn fetch_response(
    topic: &str,
    partition: u32,
    offset: u64,
    format: v1::Format,
    max_bytes: u32,
    f: crate::replica::handle::Fetched,
) -> Result<v1::FetchResponse, Status> {
    let batches_end = match f.batches.last() {
        Some(b) => batch::BatchHeader::parse(b)
            .map_err(|e| Status::data_loss(e.to_string()))?
            .next_offset(),
        None => offset,
    };
    let mut resp = v1::FetchResponse {
        topic: topic.to_owned(),
        partition,
        high_watermark: f.high_watermark,
        log_start_offset: f.log_start_offset,
        next_offset: batches_end,
        ..Default::default()
    };
    match format {
        v1::Format::Records => {
            let (records, next) = to_records(partition, offset, &f.batches, max_bytes)?;
            resp.records = records;
            resp.next_offset = next;
        }
        v1::Format::Batches => resp.batches = f.batches,
    }
    Ok(resp)
}

/// One fetch from the serving leader under its lease, long-polling up to `wait` for data past `offset`.
async fn fetch_once(
    broker: &Broker,
    via: &Via,
    r: &Replica,
    offset: u64,
    max_bytes: u32,
    wait: Duration,
) -> Result<crate::replica::handle::Fetched, Status> {
    let status = |e| via.replica_status(broker, e);
    r.ready_to_read(READ_LEASE_WAIT).await.map_err(status)?;
    let f = r.fetch(offset, max_bytes).map_err(status)?;
    if !f.batches.is_empty() || wait.is_zero() {
        return Ok(f);
    }
    {
        // Counted while it waits (a gauge on /metrics), so an operator sees how many long polls and
        // subscriptions are parked, and a test can tell a poll is waiting before it publishes.
        let _waiting = WaitingFetch::start();
        r.wait_for(offset, wait).await;
    }
    r.ready_to_read(READ_LEASE_WAIT).await.map_err(status)?;
    r.fetch(offset, max_bytes).map_err(status)
}

/// Holds an answer for a quota's `wait`; no timer at all when there is none to wait (the common case: no
/// quota, or within it), so the acknowledgement goes out on the same turn.
async fn hold(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// A fetch waiting for records past its offset: `ferry_fetch_waiting` counts it until dropped.
struct WaitingFetch;

impl WaitingFetch {
    fn start() -> Self {
        metrics::gauge!("ferry_fetch_waiting").increment(1.0);
        WaitingFetch
    }
}

impl Drop for WaitingFetch {
    fn drop(&mut self) {
        metrics::gauge!("ferry_fetch_waiting").decrement(1.0);
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<v1::FetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ferry for ClientService {
    async fn publish(
        &self,
        req: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let started = Instant::now();
        let principal = self.topic_principal(&req, Operation::Write, &req.get_ref().topic)?;
        let req = req.into_inner();
        check_topic(&req.topic)?;
        let durability = durability(req.acks)?;
        let topic = self.broker.topic(&req.topic).map_err(|e| self.status(e))?;
        let max = self.broker.config.batch_bytes_max;
        let batches: BTreeMap<u32, Bytes> = match req.payload {
            None => return Err(Status::invalid_argument("publish needs records or a batch")),
            Some(Payload::Batch(b)) => {
                let p = req
                    .partition
                    .ok_or_else(|| Status::invalid_argument("a batch publish needs a partition"))?;
                if b.len() > max as usize {
                    return Err(Status::invalid_argument(format!(
                        "batch is {} bytes; the limit is {max}",
                        b.len()
                    )));
                }
                BTreeMap::from([(p, b)])
            }
            Some(Payload::Records(list)) => {
                if list.records.is_empty() {
                    return Err(Status::invalid_argument("publish has no records"));
                }
                let n = topic.partitions;
                if let Some(p) = req.partition.filter(|p| *p >= n) {
                    return Err(to_status(BrokerError::UnknownPartition {
                        topic: topic.name,
                        partition: p,
                        partitions: n,
                    }));
                }
                let rr = self.round_robin.fetch_add(1, Ordering::Relaxed);
                let out = batches_from_records(list.records, self.broker.now_ms(), |r| {
                    match req.partition {
                        Some(p) => p,
                        None if r.has_key || !r.key.is_empty() => partition_for_key(&r.key, n),
                        None => (rr % u64::from(n)) as u32,
                    }
                });
                if let Some((_, b)) = out.iter().find(|(_, b)| b.len() > max as usize) {
                    return Err(Status::invalid_argument(format!(
                        "records make a batch of {} bytes; the limit is {max}",
                        b.len()
                    )));
                }
                out
            }
        };
        let timeout = match req.timeout_ms {
            0 => Duration::from_millis(self.broker.config.publish_timeout_ms),
            t => Duration::from_millis(u64::from(t)),
        };
        let bytes: usize = batches.values().map(Bytes::len).sum();
        let _budget = self
            .broker
            .admit_publish(bytes, timeout)
            .await
            .map_err(|e| self.status(e))?;
        let work = futures::future::try_join_all(batches.into_iter().map(|(p, b)| {
            let broker = self.broker.clone();
            let topic = req.topic.clone();
            async move {
                let ack = broker
                    .publish(&topic, p, b, durability)
                    .await
                    .map_err(|e| self.status(e))?;
                Ok::<_, Status>(v1::PartitionAck {
                    partition: p,
                    base_offset: ack.base_offset,
                    record_count: ack.record_count,
                })
            }
        }));
        let acks = tokio::time::timeout(timeout, work).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "not durable within {} ms; outcome unknown",
                timeout.as_millis()
            ))
        })??;
        let records: u64 = acks.iter().map(|a| u64::from(a.record_count)).sum();
        metrics::counter!("ferry_publish_records_total").increment(records);
        metrics::counter!("ferry_publish_bytes_total").increment(bytes as u64);
        metrics::histogram!("ferry_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        // Past its quota, the answer waits (the publish itself is durable already).
        hold(
            self.auth
                .throttle(&principal, QuotaKind::Publish, bytes as u64),
        )
        .await;
        Ok(Response::new(v1::PublishResponse { acks }))
    }

    async fn fetch(
        &self,
        req: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let principal = self.topic_principal(&req, Operation::Read, &req.get_ref().topic)?;
        let req = req.into_inner();
        let (replica, format, max_bytes) =
            self.read_target(&req.topic, req.partition, req.format, req.max_bytes)?;
        let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
        let f = fetch_once(
            &self.broker,
            &self.via,
            &replica,
            req.offset,
            max_bytes,
            wait,
        )
        .await?;
        let resp = fetch_response(&req.topic, req.partition, req.offset, format, max_bytes, f)?;
        metrics::counter!("ferry_fetch_responses_total").increment(1);
        let bytes = prost::Message::encoded_len(&resp) as u64;
        hold(self.auth.throttle(&principal, QuotaKind::Fetch, bytes)).await;
        Ok(Response::new(resp))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<v1::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let principal = self.topic_principal(&req, Operation::Read, &req.get_ref().topic)?;
        let req = req.into_inner();
        let (replica, format, max_bytes) =
            self.read_target(&req.topic, req.partition, req.format, req.max_bytes)?;
        // Check the start offset now so a bad one is an error, not an empty stream.
        fetch_once(
            &self.broker,
            &self.via,
            &replica,
            req.offset,
            1,
            Duration::ZERO,
        )
        .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBE_BUFFER);
        let (broker, via, auth) = (self.broker.clone(), self.via.clone(), self.auth.clone());
        tokio::spawn(async move {
            let mut offset = req.offset;
            loop {
                // The partition's replica is looked up again each time: one that was stopped, repaired or
                // moved since is never read through its old handle (H6 in the durability audit).
                let f = match broker.partition(&req.topic, req.partition) {
                    Ok(replica) => {
                        fetch_once(
                            &broker,
                            &via,
                            &replica,
                            offset,
                            max_bytes,
                            Duration::from_millis(SUBSCRIBE_POLL_MS),
                        )
                        .await
                    }
                    Err(e) => Err(via.status(&broker, e)),
                };
                let item = f.and_then(|f| {
                    fetch_response(&req.topic, req.partition, offset, format, max_bytes, f)
                });
                match item {
                    Ok(resp) if resp.next_offset == offset => {
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Ok(resp) => {
                        offset = resp.next_offset;
                        let bytes = prost::Message::encoded_len(&resp) as u64;
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                        hold(auth.throttle(&principal, QuotaKind::Fetch, bytes)).await;
                    }
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_offsets(
        &self,
        req: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        use v1::list_offsets_request::Spec;
        self.topic_principal(&req, Operation::Describe, &req.get_ref().topic)?;
        let req = req.into_inner();
        check_topic(&req.topic)?;
        let replica = self
            .broker
            .partition(&req.topic, req.partition)
            .map_err(|e| self.status(e))?;
        let status = |e| self.via.replica_status(&self.broker, e);
        replica
            .ready_to_read(READ_LEASE_WAIT)
            .await
            .map_err(status)?;
        let (high_watermark, log_start_offset) = replica.bounds().map_err(status)?;
        let offset = match req.spec {
            Some(Spec::Earliest(_)) => log_start_offset,
            Some(Spec::Latest(_)) => high_watermark,
            Some(Spec::TimestampMs(ts)) => replica
                .offset_for_time(ts)
                .map_err(|e| self.via.replica_status(&self.broker, e))?,
            None => {
                return Err(Status::invalid_argument(
                    "list offsets needs earliest, latest or timestamp_ms",
                ))
            }
        };
        Ok(Response::new(v1::ListOffsetsResponse {
            offset,
            high_watermark,
            log_start_offset,
        }))
    }

    async fn group_heartbeat(
        &self,
        req: Request<v1::GroupHeartbeatRequest>,
    ) -> Result<Response<v1::GroupHeartbeatResponse>, Status> {
        let r = req.get_ref();
        let topics = r.topics.iter().map(String::as_str);
        self.group_principal(&req, Operation::Read, &r.group, topics)?;
        super::groups::heartbeat(&self.broker, &self.via, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn commit_offsets(
        &self,
        req: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let r = req.get_ref();
        let topics = r.offsets.iter().map(|o| o.topic.as_str());
        self.group_principal(&req, Operation::Read, &r.group, topics)?;
        super::groups::commit(&self.broker, &self.via, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn describe_group(
        &self,
        req: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        self.group_principal(&req, Operation::Describe, &req.get_ref().group, [])?;
        super::groups::describe(&self.broker, &self.via, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_groups(
        &self,
        req: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let p = self.auth.principal(&req)?;
        let mut list = super::groups::list(&self.broker, &self.via).await?;
        list.groups.retain(|g| {
            self.auth.may(
                &self.broker,
                &p,
                Operation::Describe,
                ResourceType::Group,
                g,
            )
        });
        Ok(Response::new(list))
    }

    async fn delete_group(
        &self,
        req: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        self.group_principal(&req, Operation::Delete, &req.get_ref().group, [])?;
        super::groups::delete(&self.broker, &self.via, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn init_producer(
        &self,
        req: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        let p = self.auth.principal(&req)?;
        self.auth.check_producer_id(&self.broker, &p)?;
        let producer_id = self
            .broker
            .init_producer()
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(v1::InitProducerResponse {
            producer_id,
            producer_epoch: 0,
        }))
    }

    async fn metadata(
        &self,
        req: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let p = self.auth.principal(&req)?;
        let req = req.into_inner();
        let meta = self.broker.metadata();
        let mut topics = Vec::new();
        let may = |name: &str| {
            self.auth.may(
                &self.broker,
                &p,
                Operation::Describe,
                ResourceType::Topic,
                name,
            )
        };
        for name in &req.topics {
            check_topic(name)?;
            self.auth.check(
                &self.broker,
                &p,
                Operation::Describe,
                ResourceType::Topic,
                name,
            )?;
            if !meta.topics.contains_key(name) {
                return Err(to_status(BrokerError::UnknownTopic(name.clone())));
            }
        }
        for t in meta.topics.values() {
            // Only what the principal may describe is listed.
            if (req.topics.is_empty() && may(&t.name)) || req.topics.contains(&t.name) {
                topics.push(topic_info(t, self.broker.cluster_view(t, false).await));
            }
        }
        Ok(Response::new(v1::MetadataResponse {
            brokers: brokers(&self.broker, self.via.name()),
            topics,
            controller: self.broker.controller().leader(),
        }))
    }
}
