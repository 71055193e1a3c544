#!/usr/bin/env python3
"""A client that knows only the .proto files: create a topic, publish plain records, consume them.

Usage: polyglot.py HOST:PORT[,HOST:PORT...] TOPIC [CA_PEM_FILE TOKEN]
With a CA file and a token: TLS (trusting that CA) and `authorization: Bearer TOKEN` on every call. With
several brokers, a call a broker refuses as not the partition's leader is tried on the next.
Generates the stubs from protocol/proto with grpcio-tools into a temp dir, so nothing generated is committed.
Exits non-zero with one line on stderr if anything does not hold.
"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "protocol", "proto")


def generate(out):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={out}",
         f"--grpc_python_out={out}", "ferry/v1/ferry.proto"],
        check=True,
    )
    sys.path.insert(0, out)


def main():
    addr, topic = sys.argv[1], sys.argv[2]
    ca, token = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
    out = tempfile.mkdtemp(prefix="ferry-py-")
    generate(out)
    import grpc
    from ferry.v1 import ferry_pb2 as pb, ferry_pb2_grpc as rpc

    def channel(a):
        if not ca:
            return grpc.insecure_channel(a)
        with open(ca, "rb") as f:
            tls = grpc.ssl_channel_credentials(root_certificates=f.read())
        creds = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(a, creds)

    channels = [channel(a) for a in addr.split(",")]
    admin = rpc.AdminStub(channels[0])
    clients = [rpc.FerryStub(ch) for ch in channels]

    class Leader:
        """Calls the Ferry service on whichever broker leads: a refusal as not the leader tries the next."""

        def __getattr__(self, name):
            def call(*args, **kwargs):
                # Leaders of a new topic take a moment to be elected: keep asking, for at most 10 s.
                deadline = time.monotonic() + 10
                while True:
                    for c in clients:
                        try:
                            return getattr(c, name)(*args, **kwargs)
                        except grpc.RpcError as e:
                            if e.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
                                raise
                            last = e
                    if time.monotonic() > deadline:
                        raise last
                    time.sleep(0.1)
            return call

    client = Leader()
    admin.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=3), timeout=10)

    sent = {}
    for i in range(30):
        key = f"user-{i % 7}".encode()
        rec = pb.Record(key=key, has_key=True, value=f"event-{i}".encode(),
                        headers=[pb.Header(key="source", value=b"python")])
        resp = client.Publish(pb.PublishRequest(topic=topic, records=pb.RecordList(records=[rec])), timeout=10)
        ack = resp.acks[0]
        sent[f"event-{i}"] = (ack.partition, ack.base_offset, key)

    got = {}
    for p in range(3):
        offset = 0
        while True:
            r = client.Fetch(pb.FetchRequest(topic=topic, partition=p, offset=offset, max_wait_ms=0), timeout=10)
            for rec in r.records:
                got[rec.value.decode()] = (rec.partition, rec.offset, rec.key)
                assert [h.key for h in rec.headers] == ["source"], rec.headers
            if r.next_offset == offset or r.next_offset >= r.high_watermark:
                break
            offset = r.next_offset

    if got != sent:
        print(f"error: consumed {len(got)} records that do not match the {len(sent)} published", file=sys.stderr)
        sys.exit(1)
    # Same key, same partition.
    by_key = {}
    for part, _, key in sent.values():
        by_key.setdefault(key, set()).add(part)
    if any(len(s) != 1 for s in by_key.values()):
        print("error: one key landed on several partitions", file=sys.stderr)
        sys.exit(1)
    # Bad input gets a clear status.
    try:
        client.Publish(pb.PublishRequest(topic="..", records=pb.RecordList(records=[rec])), timeout=10)
        print("error: an invalid topic name was accepted", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    first = None
    for c in clients:
        stream = c.Subscribe(pb.SubscribeRequest(topic=topic, partition=sent["event-0"][0], offset=0), timeout=10)
        try:
            first = next(stream)
            break
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE):
                raise
    assert first is not None, "no broker serves the subscribe stream"
    assert len(first.records) > 0
    stream.cancel()
    print(f"ok: python client published and consumed {len(got)} records")


if __name__ == "__main__":
    main()
