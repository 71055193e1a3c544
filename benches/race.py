#!/usr/bin/env python3
"""The race: Ferry and the NATS JetStream peer side by side in one invocation, on this machine.

    benches/race.py [--reps 3] [--scale 1.0] [--out target/race/report.json] [--skip-build] [--skip-nats]

Builds release `ferryd` (no fault injection) and `ferry`, measures the disk's sequential direct write, then
for R1 (one broker) and R3 (three brokers, one partition at replication factor 3), at 100 B and 1 KiB:

- publish, many in flight: `ferry bench produce` (the SDK's batching producer) -> msg/s, MB/s, the server
  CPU per message (utime + stime of every broker process, /proc/PID/stat) and Ferry's client CPU per message
  (the `ferry` process's, from getrusage; on 2 cores the client is the limit for small messages);
- publish, one in flight: `ferry bench produce --sync --linger-ms 0` -> acknowledgement p50 / p99;
- consume: `ferry consume --from beginning --exit-at-end` to /dev/null of what the publish run wrote, and
  `ferry bench consume` (whole batches, nothing decoded or printed) of the same.

Then it runs ../shared/bench/nats-peer.sh (override with NATS_PEER=PATH) with the same sizes and REPS, and
prints every figure for both sides with the ratio, and writes the JSON report. Ferry runs at its durable
defaults (fsync before every acknowledgement, ACKS_ALL); NATS at its defaults (no fsync before the
acknowledgement). Medians of REPS runs. Each (cluster, size) case of either side starts from a fresh page
cache when the race runs as root (`page_cache` in the report says whether it could). docs/benchmarks.md
records the results and how to read them.
"""

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")
READY_DEADLINE_S = 60
SIZES = (100, 1024)
# Messages per publish run at scale 1: (cluster, size) -> count. About 2-6 s each on 2 cores.
COUNTS = {("r1", 100): 2_000_000, ("r1", 1024): 400_000, ("r3", 100): 1_000_000, ("r3", 1024): 200_000}
SYNC_COUNT = 3_000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fresh_page_cache():
    """Writes back and drops the page cache (root only), so every case starts from the same memory state: on
    this machine a publish run slows as the page cache grows across runs (1 KiB R1: about 450-500 MB/s on a
    fresh cache, 220-370 MB/s after a few GB were written, the same build; docs/benchmarks.md). Returns
    whether it could."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def children_cpu_s():
    """User + system CPU seconds of every child process waited for so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_ticks(pids):
    total = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the whole line)
    return total


class Cluster:
    """`n` ferryd processes on 127.0.0.1 with their own data dirs; stopped (and deleted) on exit."""

    def __init__(self, bin_dir, n, work):
        self.ferry = str(bin_dir / "ferry")
        self.work = Path(tempfile.mkdtemp(dir=work))
        base = random.randrange(20_000, 40_000, 100)
        peers = ",".join(f"{i}=127.0.0.1:{base + i}" for i in range(1, n + 1))
        self.procs = []
        for i in range(1, n + 1):
            args = [str(bin_dir / "ferryd"), "--data-dir", str(self.work / f"d{i}"), "--node-id", str(i),
                    "--listen", f"127.0.0.1:{base + 10 + i}", "--http-listen", f"127.0.0.1:{base + 20 + i}",
                    "--peer-listen", f"127.0.0.1:{base + i}", "--log", "warn"]
            if n > 1:
                args += ["--peers", peers]
            out = open(self.work / f"log{i}", "w")
            self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
        self.bootstrap = ",".join(f"127.0.0.1:{base + 10 + i}" for i in range(1, n + 1))
        self.wait_ready()

    def pids(self):
        return [p.pid for p in self.procs]

    def cli(self, *args, stdout=subprocess.PIPE):
        r = subprocess.run([self.ferry, "--bootstrap", self.bootstrap, *args], stdout=stdout,
                           stderr=subprocess.PIPE, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"ferry {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def wait_ready(self):
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ferryd exited with {p.returncode}; log in {self.work}")
            try:
                s = json.loads(self.cli("cluster", "status", "-o", "json"))
                if s["leaderless_partitions"] == 0:
                    return
            except (RuntimeError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the cluster was not ready within {READY_DEADLINE_S} s")

    def topic(self, name, replicas):
        self.cli("topic", "create", name, "--partitions", "1", "--replicas", str(replicas))
        self.wait_ready()

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def ferry_suite(bin_dir, cluster, reps, scale, work):
    """Every Ferry figure of one cluster shape: {size: {publish, one_in_flight, consume}}."""
    n = 1 if cluster == "r1" else 3
    c = Cluster(bin_dir, n, work)
    out = {}
    try:
        for size in SIZES:
            fresh_page_cache()
            count = max(1000, int(COUNTS[(cluster, size)] * scale))
            runs = {"msgs_per_s": [], "cpu_us_per_msg": [], "client_cpu_us_per_msg": [], "p50_us": [], "p99_us": [],
                    "consume_msgs_per_s": [], "batch_consume_msgs_per_s": []}
            for rep in range(reps):
                topic = f"race-{size}-{rep}"
                c.topic(topic, n)
                c0, k0 = cpu_ticks(c.pids()), children_cpu_s()
                r = json.loads(c.cli("bench", "produce", "--topic", topic, "--messages", str(count),
                                     "--size", str(size), "-o", "json"))
                c1, k1 = cpu_ticks(c.pids()), children_cpu_s()
                runs["msgs_per_s"].append(r["messages_per_sec"])
                runs["cpu_us_per_msg"].append((c1 - c0) / HZ * 1e6 / count)
                runs["client_cpu_us_per_msg"].append((k1 - k0) * 1e6 / count)
                t0 = time.monotonic()
                c.cli("consume", topic, "--from", "beginning", "--exit-at-end", stdout=subprocess.DEVNULL)
                runs["consume_msgs_per_s"].append(count / (time.monotonic() - t0))
                b = json.loads(c.cli("bench", "consume", "--topic", topic, "-o", "json"))
                runs["batch_consume_msgs_per_s"].append(b["messages_per_sec"])
                s = json.loads(c.cli("bench", "produce", "--topic", topic, "--messages", str(SYNC_COUNT),
                                     "--size", str(size), "--sync", "--linger-ms", "0", "-o", "json"))
                runs["p50_us"].append(s["latency_ms"]["p50"] * 1000)
                runs["p99_us"].append(s["latency_ms"]["p99"] * 1000)
            med = {k: statistics.median(v) for k, v in runs.items()}
            out[size] = {
                "publish": {"msgs_per_s": med["msgs_per_s"], "mb_per_s": med["msgs_per_s"] * size / 1e6,
                            "server_cpu_us_per_msg": med["cpu_us_per_msg"],
                            "client_cpu_us_per_msg": med["client_cpu_us_per_msg"], "runs": runs["msgs_per_s"]},
                "one_in_flight": {"p50_us": med["p50_us"], "p99_us": med["p99_us"]},
                "consume": {"msgs_per_s": med["consume_msgs_per_s"], "runs": runs["consume_msgs_per_s"]},
                "batch_consume": {"msgs_per_s": med["batch_consume_msgs_per_s"],
                                  "runs": runs["batch_consume_msgs_per_s"]},
            }
            log(f"ferry {cluster} {size} B: {json.dumps(out[size])}")
    finally:
        c.stop()
    return out


NATS_LINE = re.compile(
    r"^NATS \S+ (?P<label>\S+)\s+(?P<kind>pub-sync|pub-async|consume)\s+size=(?P<size>\d+).*?"
    r"median\s+(?P<msgs>[\d.]+) msg/s\s+(?P<mb>[\d.]+) MB/s"
    r"(?:\s+ack p50\s+(?P<p50>[\d.]+) us p99\s+(?P<p99>[\d.]+) us)?"
    r"(?:.*server_cpu_us/msg=(?P<cpu>[\d.]+))?")


def parse_nats(text):
    """nats-peer.sh's summary lines as {cluster: {size: {publish, one_in_flight, consume}}}."""
    out = {}
    for line in text.splitlines():
        m = NATS_LINE.match(line)
        if not m:
            continue
        cluster = "r1" if m["label"].startswith("R1") else "r3"
        fig = out.setdefault(cluster, {}).setdefault(int(m["size"]), {})
        if m["kind"] == "pub-async":
            fig["publish"] = {"msgs_per_s": float(m["msgs"]), "mb_per_s": float(m["mb"]),
                              "server_cpu_us_per_msg": float(m["cpu"]) if m["cpu"] else None}
        elif m["kind"] == "pub-sync":
            fig["one_in_flight"] = {"p50_us": float(m["p50"]), "p99_us": float(m["p99"])}
        else:
            fig["consume"] = {"msgs_per_s": float(m["msgs"])}
    return out


def disk_write_mb_per_s(work):
    """Sequential direct write of 1 GiB to the work dir's disk (dd), in MB/s."""
    target = Path(work) / "dd.bin"
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=1024", "oflag=direct",
                    "conv=fsync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mb = 1024 * 1024 * 1024 / (time.monotonic() - t0) / 1e6
    target.unlink()
    return mb


def rows(ferry, nats):
    """(figure, ferry value, nats value, unit, higher is better) for the table."""
    out = []
    for cluster in ("r1", "r3"):
        for size in SIZES:
            f, n = ferry.get(cluster, {}).get(size, {}), nats.get(cluster, {}).get(size, {})
            name = f"{cluster.upper()} {size} B"
            g = lambda d, a, b: d.get(a, {}).get(b)
            out += [
                (f"{name} publish", g(f, "publish", "msgs_per_s"), g(n, "publish", "msgs_per_s"), "msg/s", True),
                (f"{name} publish", g(f, "publish", "mb_per_s"), g(n, "publish", "mb_per_s"), "MB/s", True),
                (f"{name} server CPU", g(f, "publish", "server_cpu_us_per_msg"),
                 g(n, "publish", "server_cpu_us_per_msg"), "us/msg", False),
                # NATS's client is the peer script's own tool: its CPU is not measured, so no ratio.
                (f"{name} client CPU", g(f, "publish", "client_cpu_us_per_msg"), None, "us/msg", False),
                (f"{name} one in flight p50", g(f, "one_in_flight", "p50_us"), g(n, "one_in_flight", "p50_us"),
                 "us", False),
                (f"{name} one in flight p99", g(f, "one_in_flight", "p99_us"), g(n, "one_in_flight", "p99_us"),
                 "us", False),
                (f"{name} consume", g(f, "consume", "msgs_per_s"), g(n, "consume", "msgs_per_s"), "msg/s", True),
                (f"{name} consume batches", g(f, "batch_consume", "msgs_per_s"), g(n, "consume", "msgs_per_s"),
                 "msg/s", True),
            ]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the message counts")
    ap.add_argument("--out", default=str(ROOT / "target" / "race" / "report.json"))
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-nats", action="store_true")
    a = ap.parse_args()
    if not a.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "ferry-broker", "-p", "ferry-cli"], cwd=ROOT,
                       check=True)
    bin_dir = ROOT / "target" / "release"
    # Brokers inherit the environment: FERRY_DIRECT_IO=true races them with direct I/O (docs/configuration.md).
    direct_io = os.environ.get("FERRY_DIRECT_IO", "false").lower() in ("true", "1", "yes")
    if direct_io:
        log("ferry brokers write their logs with direct I/O (FERRY_DIRECT_IO)")
    can_drop = fresh_page_cache()  # also the first case's drop
    work = tempfile.mkdtemp(prefix="ferry-race-", dir=os.environ.get("RACE_DIR"))
    try:
        disk = disk_write_mb_per_s(work)
        log(f"disk: {disk:.0f} MB/s sequential direct write")
        ferry = {c: ferry_suite(bin_dir, c, a.reps, a.scale, work) for c in ("r1", "r3")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    nats, nats_text = {}, ""
    if not a.skip_nats:
        script = os.environ.get("NATS_PEER", str(ROOT.parent / "shared" / "bench" / "nats-peer.sh"))
        # One case per run of the script, each from a fresh page cache as Ferry's are.
        for cluster in ("r1", "r3"):
            for size in SIZES:
                fresh_page_cache()
                env = dict(os.environ, REPS=str(a.reps), SIZES=str(size), CLUSTERS=cluster)
                r = subprocess.run(["bash", script], env=env, stdout=subprocess.PIPE, text=True, check=True)
                nats_text += r.stdout
        nats = parse_nats(nats_text)
    table = rows(ferry, nats)
    print(f"# race: {os.cpu_count()} cores, disk {disk:.0f} MB/s; Ferry fsync before ack (ACKS_ALL), "
          f"NATS defaults (no fsync before ack); medians of {a.reps}")
    print(f"{'figure':<28} {'Ferry':>12} {'NATS':>12} {'unit':<7} {'Ferry/NATS':>10}")
    report_rows = []
    for name, fv, nv, unit, higher in table:
        ratio = None
        if fv and nv:
            ratio = fv / nv if higher else nv / fv
        cell = lambda v: "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2f}")
        better = "" if ratio is None else f"{ratio:.2f}x"
        print(f"{name:<28} {cell(fv):>12} {cell(nv):>12} {unit:<7} {better:>10}")
        report_rows.append({"figure": name, "unit": unit, "ferry": fv, "nats": nv,
                            "ferry_advantage": ratio, "higher_is_better": higher})
    print("(Ferry/NATS: how many times better Ferry is; for latency and CPU, NATS's value over Ferry's)")
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "disk_seq_write_mb_per_s": disk},
        "durability": {"ferry": "fsync before every acknowledgement, ACKS_ALL (defaults)"
                       + ("; direct I/O (FERRY_DIRECT_IO)" if direct_io else ""),
                       "nats": "JetStream file storage defaults: no fsync before the acknowledgement"},
        "reps": a.reps, "scale": a.scale,
        "page_cache": ("dropped before each (cluster, size) case on both sides" if can_drop
                       else "not dropped (not root): cases ran on whatever the page cache held"),
        "ferry": ferry, "nats": nats, "nats_output": nats_text, "rows": report_rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    log(f"report: {a.out}")


if __name__ == "__main__":
    main()
