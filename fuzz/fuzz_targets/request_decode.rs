//! Fuzzes the decoding of `ferry.v1` requests as a broker receives them (bad input B1-B4 of the fault
//! matrix): arbitrary bytes decoded as each request type must give a value or an error, never a panic, a
//! hang or a huge allocation; a decoded request re-encodes to one that decodes equal; and the checks the
//! broker applies next (topic names, packed batches) hold for whatever decoded.

#![no_main]

use bytes::Bytes;
use ferry_protocol::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let again = M::decode(Bytes::from(m.encode_to_vec())).expect("a re-encoded request decodes");
    assert_eq!(&again, m, "decode-encode-decode changed the request");
}

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    if let Ok(r) = v1::PublishRequest::decode(b.clone()) {
        round_trip(&r);
        let _ = ferry_protocol::topic::validate_topic_name(&r.topic);
        match &r.payload {
            Some(v1::publish_request::Payload::Batch(batch)) => {
                let _ = ferry_protocol::batch::validate_records(batch);
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
        let _ = ferry_protocol::topic::validate_user_topic_name(&r.name);
    }
    if let Ok(r) = v1::RaftBatch::decode(b) {
        round_trip(&r);
    }
});
