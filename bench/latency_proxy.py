#!/usr/bin/env python3
"""A TCP proxy that adds a one-way delay in each direction: a WAN on loopback.

Each forward listens on 127.0.0.1 (a port the system picks) and relays to its
target. Every chunk read is written `delay` after it was read, while later
chunks keep being read: a delay line, pipelined, so throughput is not reduced
(only latency is added). TCP_NODELAY is set on both sides. A new connection
also pays one round trip before its first bytes go out, as a real connect()
would (the proxy itself accepts at once). TLS passes through unchanged.

Plain-HTTP/1.1 forwards (--http) are also observed: requests and responses are
delimited (Content-Length), counted per connection, and timed, so the stats
tell connection reuse and where the client waits (see `stats`).

usage:
  latency_proxy.py --forward NAME,HOST:PORT,DELAY_MS[,http] ... --ports-file FILE [--stats FILE]
  latency_proxy.py --emulator-dir DIR --arm-delay MS --ingest-delay MS [--login-delay MS] [--stats FILE]

The second form reads the emulator's poller.toml and ingest-url in DIR, proxies
ARM, Entra ID and the ingestion endpoint, and rewrites those files to point at
the proxy (the originals are kept as *.direct). nextLinks follow: the emulator
builds them from the Host header, which is the proxy's address.

Standard library only. Writes the stats every 5 s, on SIGUSR1, and when it
stops (SIGTERM or SIGINT).
"""
import argparse, asyncio, json, os, re, signal, socket, statistics, sys, time

CHUNK = 256 * 1024


class Http1:
    """Finds message starts in one direction of an HTTP/1.1 stream."""

    def __init__(self):
        self.pending = b""
        self.body_left = 0
        self.in_head = False
        self.ok = True
        self.starts = []

    def feed(self, data, t):
        if not self.ok or not data:
            return
        data = self.pending + data if self.pending else data
        self.pending = b""
        i = 0
        while i < len(data):
            if self.body_left:
                take = min(self.body_left, len(data) - i)
                self.body_left -= take
                i += take
                continue
            if not self.in_head:
                self.in_head = True
                self.starts.append(t)
            end = data.find(b"\r\n\r\n", i)
            if end < 0:
                self.pending = data[i:]
                if len(self.pending) > 65536:
                    self.ok = False
                return
            head = data[i:end].lower()
            i = end + 4
            self.in_head = False
            if b"transfer-encoding: chunked" in head:
                self.ok = False
                return
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            self.body_left = int(m.group(1)) if m else 0


class Conn:
    def __init__(self, opened):
        self.opened = opened
        self.closed = None
        self.up_bytes = 0
        self.down_bytes = 0
        self.requests = Http1()
        self.responses = Http1()


class Forward:
    def __init__(self, name, host, port, delay_ms, http):
        self.name, self.host, self.port = name, host, port
        self.delay = delay_ms / 1000
        self.http = http
        self.conns = []
        self.open = 0
        self.peak_open = 0
        self.listen = None

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, limit=CHUNK)
        self.listen = self.server.sockets[0].getsockname()[:2]

    async def handle(self, creader, cwriter):
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        conn = Conn(time.time())
        self.conns.append(conn)
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            sreader, swriter = await asyncio.open_connection(self.host, self.port, limit=CHUNK)
        except OSError:
            cwriter.close()
            self.open -= 1
            conn.closed = time.time()
            return
        for w in (cwriter, swriter):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The client's first bytes leave after the handshake's round trip.
        up = self.pipe(creader, swriter, accepted + 2 * self.delay, conn, True)
        down = self.pipe(sreader, cwriter, 0.0, conn, False)
        await asyncio.gather(up, down, return_exceptions=True)
        for w in (cwriter, swriter):
            try:
                w.close()
            except Exception:
                pass
        self.open -= 1
        conn.closed = time.time()

    async def pipe(self, reader, writer, not_before, conn, upstream):
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        tracker = (conn.requests if upstream else conn.responses) if self.http else None

        async def rx():
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                now = loop.time()
                if upstream:
                    conn.up_bytes += len(data)
                else:
                    conn.down_bytes += len(data)
                due = max(now, not_before) + self.delay
                if tracker is not None:
                    # Requests: when they reach the server; responses: when
                    # they leave it.
                    tracker.feed(data, time.time() + (due - now if upstream else 0))
                queue.put_nowait((due, data))
                if not data:
                    return

        async def tx():
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return

        await asyncio.gather(rx(), tx())

    def stats(self):
        conns = self.conns
        out = {
            "name": self.name,
            "listen": "%s:%d" % tuple(self.listen),
            "target": "%s:%d" % (self.host, self.port),
            "delay_ms": self.delay * 1000,
            "connections": len(conns),
            "peak_open_connections": self.peak_open,
            "bytes_up": sum(c.up_bytes for c in conns),
            "bytes_down": sum(c.down_bytes for c in conns),
        }
        if not self.http:
            return out
        per_conn = [len(c.requests.starts) for c in conns]
        # Per request, from the proxy's clock: the server's time (its response
        # started minus the request's arrival there), and the client's gap on a
        # reused connection (when it sent its next request minus when it had
        # the previous response).
        server, gap = [], []
        for c in conns:
            rq, rs = c.requests.starts, c.responses.starts
            for k in range(min(len(rq), len(rs))):
                server.append(rs[k] - rq[k])
                if k + 1 < len(rq):
                    gap.append((rq[k + 1] - self.delay) - (rs[k] + self.delay))
        ms = lambda xs, q: round(1000 * quantile(xs, q), 2) if xs else None
        out.update({
            "parsed": all(c.requests.ok and c.responses.ok for c in conns),
            "requests": sum(per_conn),
            "requests_per_connection": {
                "min": min(per_conn, default=0), "median": statistics.median(per_conn) if per_conn else 0,
                "max": max(per_conn, default=0)},
            "server_ms": {"p50": ms(server, 0.5), "p90": ms(server, 0.9), "p99": ms(server, 0.99)},
            "client_gap_ms": {"n": len(gap), "p10": ms(gap, 0.1), "p50": ms(gap, 0.5),
                              "p90": ms(gap, 0.9), "p99": ms(gap, 0.99), "mean": round(1000 * statistics.fmean(gap), 2) if gap else None},
            "round_trip_ms": round(2000 * self.delay, 1),
        })
        return out


def quantile(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def parse_forward(text):
    parts = text.split(",")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError("NAME,HOST:PORT,DELAY_MS[,http]")
    host, _, port = parts[1].rpartition(":")
    return parts[0], host, int(port), float(parts[2]), len(parts) == 4 and parts[3] == "http"


def emulator_forwards(d, arm_ms, ingest_ms, login_ms):
    import tomllib
    with open(os.path.join(d, "poller.toml"), "rb") as f:
        cfg = tomllib.load(f)
    hostport = lambda url: re.match(r"^\w+://([^/]+)", url).group(1)
    arm = hostport(cfg["azure"]["resource_manager_url"])
    login = hostport(cfg["azure"]["authority_host"])
    ingest = hostport(open(os.path.join(d, "ingest-url")).read().strip())
    split = lambda hp: (hp.rpartition(":")[0], int(hp.rpartition(":")[2]))
    return [("arm", *split(arm), arm_ms, False), ("login", *split(login), login_ms, False),
            ("ingest", *split(ingest), ingest_ms, True)]


def rewrite(d, fwd):
    """Points the emulator's poller.toml and ingest-url at the proxy."""
    for name in ("poller.toml", "ingest-url"):
        path = os.path.join(d, name)
        text = open(path).read()
        if not os.path.exists(path + ".direct"):
            with open(path + ".direct", "w") as f:
                f.write(text)
        for f in fwd:
            text = text.replace("://%s:%d" % (f.host, f.port), "://%s:%d" % tuple(f.listen))
        tmp = path + ".tmp"
        with open(tmp, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forward", action="append", type=parse_forward, default=[])
    ap.add_argument("--emulator-dir")
    ap.add_argument("--arm-delay", type=float, default=0)
    ap.add_argument("--ingest-delay", type=float, default=0)
    ap.add_argument("--login-delay", type=float)
    ap.add_argument("--ports-file")
    ap.add_argument("--stats")
    a = ap.parse_args()
    specs = list(a.forward)
    if a.emulator_dir:
        login = a.arm_delay if a.login_delay is None else a.login_delay
        specs += emulator_forwards(a.emulator_dir, a.arm_delay, a.ingest_delay, login)
    if not specs:
        ap.error("nothing to forward")
    fwd = [Forward(*s) for s in specs]
    for f in fwd:
        await f.start()
    if a.emulator_dir:
        rewrite(a.emulator_dir, fwd)
    ports = {f.name: "%s:%d" % tuple(f.listen) for f in fwd}
    if a.ports_file:
        write_json(a.ports_file, ports)
    print(json.dumps({"listening": ports}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump = lambda: a.stats and write_json(a.stats, [f.stats() for f in fwd])
    loop.add_signal_handler(signal.SIGUSR1, dump)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 5)
        except asyncio.TimeoutError:
            dump()
    dump()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
