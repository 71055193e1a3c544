//! The envelope of one Raft message on a peer stream. Entry data travel beside the message
//! (`RaftEnvelope.entry_data`): the sender encodes the message without them and hands the batches it holds
//! to the request as they are, so a leader never re-encodes record payloads into a Raft message (the gRPC
//! encoder copies them once into each follower's request body, as it would any field); the receiver puts
//! the received slices back in (no copy).

use bytes::Bytes;
use ferry_protocol::v1;
use protobuf::Message as _;
use raft::eraftpb::Message;

/// The envelope of a message: its entries' data taken out and carried beside it (no copy), the rest encoded.
pub fn envelope(group: u64, mut m: Message) -> v1::RaftEnvelope {
    let entry_data: Vec<Bytes> = if m.entries.iter().any(|e| !e.data.is_empty()) {
        m.entries
            .iter_mut()
            .map(|e| std::mem::take(&mut e.data))
            .collect()
    } else {
        Vec::new()
    };
    let bytes = m.write_to_bytes().expect("raft messages encode");
    v1::RaftEnvelope {
        group_id: group,
        message: Bytes::from(bytes),
        entry_data,
    }
}

/// The envelope with its entries' data back inside the message, for a peer that predates `RaftSplit`.
pub fn whole(env: v1::RaftEnvelope) -> v1::RaftEnvelope {
    if env.entry_data.is_empty() {
        return env;
    }
    let group_id = env.group_id;
    let m = joined(env.message, env.entry_data).expect("an envelope this broker built joins");
    v1::RaftEnvelope {
        group_id,
        message: Bytes::from(m.write_to_bytes().expect("raft messages encode")),
        entry_data: Vec::new(),
    }
}

/// Bytes an envelope carries (its message and its entries' data).
pub fn envelope_len(e: &v1::RaftEnvelope) -> u64 {
    let data: usize = e.entry_data.iter().map(Bytes::len).sum();
    (e.message.len() + data) as u64
}

/// The Raft message of a received envelope, with its entries' data put back in when they came beside it.
/// Entry data are slices of `message` and `entry_data` (the receive buffer), not copies. The error says why
/// the envelope is malformed.
pub fn joined(message: Bytes, entry_data: Vec<Bytes>) -> Result<Message, String> {
    let mut msg = <Message as protobuf::Message>::parse_from_carllerche_bytes(&message)
        .map_err(|e| format!("undecodable Raft message: {e}"))?;
    if entry_data.is_empty() {
        return Ok(msg);
    }
    if entry_data.len() != msg.entries.len() {
        return Err(format!(
            "Raft message with {} entries carries data for {}",
            msg.entries.len(),
            entry_data.len()
        ));
    }
    for (e, data) in msg.entries.iter_mut().zip(entry_data) {
        if !e.data.is_empty() {
            return Err("Raft entry carries data both inside and beside its message".into());
        }
        e.data = data;
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    fn append(data: &[&'static [u8]]) -> Message {
        let mut m = Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 3,
            index: 7,
            ..Default::default()
        };
        m.entries = data
            .iter()
            .enumerate()
            .map(|(i, d)| Entry {
                index: 8 + i as u64,
                term: 3,
                data: Bytes::from_static(d),
                ..Default::default()
            })
            .collect();
        m
    }

    #[test]
    fn entry_data_travel_beside_the_message_without_a_copy() {
        let m = append(&[b"first batch", b"", b"third batch"]);
        let env = envelope(5, m.clone());
        assert_eq!(env.entry_data.len(), 3);
        for (d, e) in env.entry_data.iter().zip(&m.entries) {
            assert_eq!(d, &e.data);
            assert_eq!(d.as_ptr(), e.data.as_ptr(), "the held bytes, not a copy");
        }
        assert!(
            env.message.len() < 40,
            "the message is encoded without the data ({} bytes)",
            env.message.len()
        );
        assert_eq!(envelope_len(&env), env.message.len() as u64 + 22);
        let back = joined(env.message.clone(), env.entry_data.clone()).unwrap();
        assert_eq!(back, m);
        // A peer that predates RaftSplit gets the same message whole.
        let w = whole(env);
        assert!(w.entry_data.is_empty());
        assert_eq!(joined(w.message, Vec::new()).unwrap(), m);
    }

    #[test]
    fn a_message_without_entry_data_is_sent_as_it_is() {
        let mut m = append(&[]);
        m.msg_type = MessageType::MsgHeartbeat;
        let env = envelope(5, m.clone());
        assert!(env.entry_data.is_empty());
        assert_eq!(joined(env.message, env.entry_data).unwrap(), m);
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        let m = append(&[b"a", b"b"]);
        let env = envelope(5, m.clone());
        let short = joined(env.message.clone(), env.entry_data[..1].to_vec());
        assert!(short.unwrap_err().contains("2 entries carries data for 1"));
        let whole_msg = Bytes::from(m.write_to_bytes().unwrap());
        let twice = joined(whole_msg, env.entry_data.clone());
        assert!(twice.unwrap_err().contains("both inside and beside"));
        let garbage = joined(Bytes::from_static(&[0xff; 9]), Vec::new());
        assert!(garbage.unwrap_err().contains("undecodable"));
    }
}
