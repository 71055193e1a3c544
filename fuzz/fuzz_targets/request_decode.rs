//! Fuzzes the decoding of `ferry.v1` requests as a broker receives them (bad input B1-B4 of the fault
//! matrix): arbitrary bytes decoded as each request type must give a value or an error, never a panic, a
//! hang or a huge allocation; a decoded request re-encodes to one that decodes equal; and what the checks
//! the broker applies next accept is what they promise: a topic name they pass is safe as a directory
//! name, and a packed batch they pass is exactly as long as it says and yields every record it declares.

#![no_main]

use bytes::Bytes;
use ferry_protocol::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let again = M::decode(Bytes::from(m.encode_to_vec())).expect("a re-encoded request decodes");
    assert_eq!(&again, m, "decode-encode-decode changed the request");
}

/// A name the validators pass is a safe single path component: 1-249 ASCII letters, digits, `.`, `_` or `-`,
/// and not `.` or `..` (checked here independently of `validate_topic_name`).
fn check_name(name: &str) {
    assert!(!name.is_empty() && name.len() <= ferry_protocol::topic::TOPIC_NAME_LEN_MAX, "{name:?}");
    assert!(name != "." && name != "..", "{name:?}");
    assert!(name.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)), "{name:?}");
}

/// A batch `validate_records` passes has the length its header says and yields its declared records, each
/// decoded whole.
fn check_batch(batch: &Bytes, h: ferry_protocol::batch::BatchHeader) {
    assert_eq!(h.batch_len as usize, batch.len(), "batch_len");
    assert!(h.record_count >= 1 && h.record_count <= ferry_protocol::limits::BATCH_RECORDS_MAX);
    let mut n = 0u32;
    for r in ferry_protocol::batch::Records::new(batch.clone(), h) {
        r.expect("a validated batch's records decode");
        n += 1;
    }
    assert_eq!(n, h.record_count, "records yielded");
}

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    if let Ok(r) = v1::PublishRequest::decode(b.clone()) {
        round_trip(&r);
        if ferry_protocol::topic::validate_topic_name(&r.topic).is_ok() {
            check_name(&r.topic);
        }
        match &r.payload {
            Some(v1::publish_request::Payload::Batch(batch)) => {
                if let Ok(h) = ferry_protocol::batch::validate_records(batch) {
                    check_batch(batch, h);
                }
            }
            Some(v1::publish_request::Payload::Records(rs)) => {
                let _ = rs.records.len();
            }
            None => {}
        }
    }
    if let Ok(r) = v1::FetchRequest::decode(b.clone()) {
        round_trip(&r);
        let _ = v1::Format::try_from(r.format);
    }
    if let Ok(r) = v1::GroupHeartbeatRequest::decode(b.clone()) {
        round_trip(&r);
    }
    if let Ok(r) = v1::CommitOffsetsRequest::decode(b.clone()) {
        round_trip(&r);
    }
    if let Ok(r) = v1::CreateTopicRequest::decode(b.clone()) {
        round_trip(&r);
        if ferry_protocol::topic::validate_user_topic_name(&r.name).is_ok() {
            check_name(&r.name);
            assert!(!r.name.starts_with("__"), "internal names are refused");
        }
    }
    if let Ok(r) = v1::RaftBatch::decode(b) {
        round_trip(&r);
        // What the peer server makes of each envelope: a message with its entries' data put back, or a
        // refusal; never a message whose entries lost or swapped the data that came beside it.
        for env in r.messages {
            let beside = env.entry_data.clone();
            if let Ok(m) = ferry_broker::peer::envelope::joined(env.message, env.entry_data) {
                if !beside.is_empty() {
                    assert_eq!(m.entries.len(), beside.len());
                    for (e, d) in m.entries.iter().zip(&beside) {
                        assert_eq!(&e.data, d);
                    }
                }
            }
        }
    }
});
