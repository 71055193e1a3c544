//! The gRPC codec of every `ferry.v1` service: prost's, except that a message that does not decode is
//! `INVALID_ARGUMENT` (the sender's mistake: malformed protobuf, a string that is not UTF-8), not tonic's
//! `INTERNAL`, which reads as a broker fault and invites a retry of the same bytes (docs/design.md, "Errors
//! clients see" in docs/operations.md).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, ProstCodec};
use tonic::Status;

/// prost encoding; decode errors as `INVALID_ARGUMENT` (`T` encoded, `U` decoded).
#[derive(Debug, Clone)]
pub struct FerryCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for FerryCodec<T, U> {
    fn default() -> Self {
        FerryCodec(PhantomData)
    }
}

impl<T, U> Codec for FerryCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = FerryDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        FerryDecoder(PhantomData)
    }
}

/// Decodes `U` with prost; a failure names the message type and prost's reason.
#[derive(Debug, Clone, Default)]
pub struct FerryDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for FerryDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_message(buf).map(Some)
    }
}

/// One `U` from `buf`, or `INVALID_ARGUMENT` naming the message type and prost's reason.
fn decode_message<U: Message + Default>(buf: impl bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| {
        let name = std::any::type_name::<U>()
            .rsplit("::")
            .next()
            .unwrap_or("message");
        Status::invalid_argument(format!("the {name} is not valid protobuf: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn decode(bytes: &[u8]) -> Result<v1::PublishRequest, Status> {
        decode_message(bytes)
    }

    #[test]
    fn undecodable_messages_are_invalid_arguments() {
        for junk in [
            &[0xff; 7][..],
            &[0x0a, 0x02, 0xff, 0xfe][..],
            &[0x0a, 0x7f][..],
        ] {
            let e = decode(junk).expect_err("junk does not decode");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{junk:?}: {e:?}");
            assert!(e.message().contains("PublishRequest"), "{}", e.message());
        }
        let ok = v1::PublishRequest {
            topic: "t".into(),
            ..Default::default()
        };
        assert_eq!(decode(&ok.encode_to_vec()).unwrap(), ok);
    }
}
