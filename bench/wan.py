#!/usr/bin/env python3
"""The latency benchmarks of BENCHMARKS.md ("Over a WAN"): the emulator behind
bench/latency_proxy.py, which adds a one-way delay to ARM, Entra ID and the
ingestion endpoint. Run by `bench/run.sh latency [SCENARIO]`.

usage: wan.py --out DIR [catchup|burst|capacity|fairness|schedule|all]

Scenarios (each bounded by a timeout; one JSON line each in DIR/wan-*.jsonl,
and a one-line summary with its target on stderr):
  catchup   N Succeeded entries (LAT_N, 100,000), one subscription, ARM 100 ms
            and endpoint 25 ms one way, `--once --since 1h`; against the ARM
            read budget and the Python SDK's listing through the same proxy.
  burst     the same, but every entry written within the last 10 minutes (a
            deployment's burst), for each N in LAT_BURST_NS (20000,100000):
            the catch-up cuts the hour into slices; the ones holding the burst
            must split by density, not run as one chain of pages.
  capacity  the same with the endpoint limited to LAT_CAPACITY (64) requests
            in flight, each taking LAT_SERVICE_MS (50 ms): share of capacity, 429s.
  fairness  one subscription catching up LAT_BACKFILL (200,000) while 20 others
            get about 5 entries/s each, daemon at a 1-minute interval: the live
            subscriptions' delivery lag during the backfill.
  schedule  LAT_SUBS (1,000) empty subscriptions at a 1-minute interval, ARM
            250 ms one way, daemon for LAT_SCHED_SECONDS (185): share of
            scheduled polls made on time, the first poll's delay, the
            poller's CPU and peak RSS, and its log lines a second at INFO.

LAT_GUARDRAILS="max_concurrency = 256" adds settings to [guardrails] (to compare with the
default). LAT_SAMPLE_S samples the catch-ups and bursts' deliveries every that many seconds (10). LAT_SDK=0 skips the SDK's listing; LAT_KEEP=1 keeps each run's directory (the
poller's log, the proxy's stats); LAT_RUST_LOG replaces the poller's RUST_LOG. Settings are the poller's defaults: the emulator's poller.toml pins
[guardrails] concurrency and retry pauses, which are removed here.
"""
import json, math, os, re, signal, ssl, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
env_int = lambda k, d: int(os.environ.get(k, d))
env_float = lambda k, d: float(os.environ.get(k, d))
TIMEOUT = env_int("LAT_TIMEOUT", 900)
PAGE_SIZE = 200
# Azure's read budget per subscription and principal: a burst, then a rate.
BURST, REFILL = 250, 25.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Run:
    """An emulator, the proxy in front of it, and the processes of one scenario."""

    def __init__(self, name, emulator_args, scenario_text=None):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"wan-{name}-")
        self.procs = []
        args = [f"{BIN}/activity-log-emulator", "--dir", self.dir, *emulator_args]
        if scenario_text is not None:
            path = os.path.join(self.dir, "scenario.toml")
            with open(path, "w") as f:
                f.write(scenario_text)
            args += ["--scenario", path]
        self.emulator = self.spawn(args, "emulator.out")
        deadline = time.monotonic() + 600
        while True:
            text = self.read("emulator.out")
            if "Run the poller" in text:
                break
            if self.emulator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start:\n{text}")
            time.sleep(0.2)
        self.arm = re.search(r"Azure Resource Manager\s+(\S+)", text).group(1)
        self.ca = ssl.create_default_context(cafile=os.path.join(self.dir, "ca.pem"))
        # The poller's defaults for delivery, not the emulator's test settings.
        toml = os.path.join(self.dir, "poller.toml")
        text = open(toml).read()
        head, sep, rest = text.partition("[guardrails]\n")
        section, sep2, tail = rest.partition("\n[")
        section = "\n".join(l for l in section.split("\n")
                            if not re.match(r"(concurrency|retry_base|retry_max) =", l))
        # LAT_GUARDRAILS="max_concurrency = 256": a setting to compare against the default.
        if os.environ.get("LAT_GUARDRAILS"):
            section = os.environ["LAT_GUARDRAILS"] + "\n" + section
        with open(toml, "w") as f:
            f.write(head + sep + section + sep2 + tail)

    def path(self, name):
        return os.path.join(self.dir, name)

    def read(self, name):
        try:
            return open(self.path(name)).read()
        except FileNotFoundError:
            return ""

    def spawn(self, args, out, env=None, stdout_to_file=True):
        f = open(self.path(out), "wb")
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT if stdout_to_file else f,
                             env=env, cwd=self.dir)
        self.procs.append(p)
        return p

    def proxy(self, arm_ms, ingest_ms):
        self.arm_ms, self.ingest_ms = arm_ms, ingest_ms
        p = self.spawn([sys.executable, os.path.join(ROOT, "bench", "latency_proxy.py"),
                        "--emulator-dir", self.dir, "--arm-delay", str(arm_ms),
                        "--ingest-delay", str(ingest_ms), "--stats", self.path("proxy-stats.json")],
                       "proxy.out")
        deadline = time.monotonic() + 30
        while "listening" not in self.read("proxy.out"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start: " + self.read("proxy.out"))
            time.sleep(0.1)
        self.proxy_proc = p

    def proxy_stats(self):
        """The proxy's stats so far (it writes them on SIGUSR1)."""
        path = self.path("proxy-stats.json")
        before = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
        self.proxy_proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.path.exists(path) and os.stat(path).st_mtime_ns != before:
                break
            time.sleep(0.05)
        try:
            return {s["name"]: s for s in json.load(open(path))}
        except (FileNotFoundError, ValueError):
            return {}

    def report(self):
        with urllib.request.urlopen(self.arm + "/_emulator/report", context=self.ca, timeout=120) as r:
            return json.load(r)

    def poller_env(self):
        env = dict(os.environ)
        # A quiet poll's line is at debug (the per-minute summary stands for
        # it at INFO): the scenarios count every poll, so they ask for them.
        env.update(SSL_CERT_FILE=self.path("ca.pem"),
                   RUST_LOG=os.environ.get("LAT_RUST_LOG", "info,azure_activity_poller::scheduler=debug"))
        return env

    def poller(self, extra, seconds, sample_every=None, stop_when=None):
        """Runs the poller until it exits or `seconds` pass (then SIGTERM).
        Samples the report every `sample_every` s; `stop_when(report)` ends it early."""
        args = [f"{BIN}/azure-activity-poller", "--config", self.path("poller.toml"),
                "--log-format", "json", *extra]
        start = time.monotonic()
        self.poller_started = time.time()
        p = self.spawn(args, "poller.log", env=self.poller_env())
        samples, stopped_early, last = [], False, None
        next_sample = start + (sample_every or 1e9)
        # Peak RSS and threads, sampled as it runs: a `--once` run exits
        # before the end's /proc read (VmHWM only grows, so only its last
        # 0.2 s can be missed).
        seen = {}
        # The bench's own processes share the cores: their CPU during the run.
        others = {"emulator": getattr(self, "emulator", None), "proxy": getattr(self, "proxy_proc", None)}
        others_before = {k: cpu_seconds(o.pid) for k, o in others.items() if o is not None}
        while p.poll() is None:
            now = time.monotonic()
            seen = proc_peaks(p.pid, seen)
            if now - start >= seconds:
                break
            if now >= next_sample:
                next_sample += sample_every
                try:
                    last = self.report()
                except OSError:
                    continue
                samples.append((round(time.monotonic() - start, 2), last))
                if stop_when and stop_when(last):
                    stopped_early = True
                    break
            time.sleep(0.2)
        timed_out = p.poll() is None and not stopped_early
        usage = proc_usage(p.pid) if p.poll() is None else {}
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(45)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        wall = time.monotonic() - start
        if seen:
            usage["peak_rss_mib"] = max(usage.get("peak_rss_mib") or 0, seen["peak_rss_mib"])
            usage["peak_threads"] = seen["peak_threads"]
            usage["peak_sockets"] = seen.get("peak_sockets")
            # (second, RSS MiB, sockets open)
            usage["trace"] = [(i, r, k) for i, r, k, _ in seen.get("trace", [])]
            usage.setdefault("cpu_s", seen.get("cpu_s"))
        usage["bench_cpu_s"] = {k: round((cpu_seconds(others[k].pid) or 0) - (v or 0), 2)
                                for k, v in others_before.items()}
        if usage.get("cpu_s") is not None:
            usage["cpu_share_of_one_core"] = round(usage["cpu_s"] / wall, 4)
        return {"exit": p.returncode, "wall_s": round(wall, 2), "timed_out": timed_out,
                "stopped_early": stopped_early, **usage}, samples

    def poll_lines(self):
        out = []
        for line in self.read("poller.log").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p is self.emulator else signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if os.environ.get("LAT_KEEP") != "1":
            subprocess.run(["rm", "-rf", self.dir])
        else:
            log(f"kept {self.dir}")


def proc_usage(pid):
    """CPU seconds and peak RSS of a running process, from /proc."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        hwm = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:"))
        return {"cpu_s": round(cpu, 2), "peak_rss_mib": round(hwm / 1024, 1)}
    except (OSError, StopIteration, IndexError, ValueError):
        return {}


def proc_peaks(pid, seen):
    """The largest VmHWM and thread count of a running process so far."""
    try:
        status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
        hwm = int(status["VmHWM"].split()[0]) / 1024
        threads = int(status["Threads"])
    except (OSError, KeyError, ValueError):
        return seen
    cpu = cpu_seconds(pid)
    rss = int(status["VmRSS"].split()[0]) / 1024
    sockets = open_sockets(pid)
    return {"peak_rss_mib": round(max(seen.get("peak_rss_mib", 0), hwm), 1),
            "peak_threads": max(seen.get("peak_threads", 0), threads),
            "peak_sockets": max(seen.get("peak_sockets", 0), sockets),
            # RSS and sockets open about once a second, to see when the peak came.
            "trace": trace_point(seen.get("trace", []), round(rss, 1), sockets),
            "cpu_s": cpu if cpu is not None else seen.get("cpu_s")}


def open_sockets(pid):
    """Sockets the process holds open (its connections, as it sees them)."""
    try:
        return sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
                   if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
    except OSError:
        return 0


def trace_point(trace, rss, sockets):
    now = time.monotonic()
    if not trace or now - trace[-1][3] >= 1.0:
        trace = trace + [(len(trace), rss, sockets, now)]
    return trace


def cpu_seconds(pid):
    """User and system CPU seconds of a running process, or None."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


def info_lines(run):
    """Lines at INFO or above: what an operator's journal receives."""
    return [l for l in run.poll_lines() if l.get("level") not in ("DEBUG", "TRACE")]


def delivered(report):
    return sum(s["delivered"] for s in report["subscriptions"])


def rate_from(samples, total_key=delivered):
    """Delivery rate over the second half of the samples (steady state)."""
    pts = [(t, total_key(r)) for t, r in samples]
    pts = [p for p in pts if p[1] > 0] or pts
    if len(pts) < 2:
        return None
    mid = pts[len(pts) // 2 - 1] if len(pts) > 2 else pts[0]
    t1, d1 = pts[-1]
    return (d1 - mid[1]) / (t1 - mid[0]) if t1 > mid[0] else None


def arm_budget_seconds(entries):
    """The least time Azure's read budget allows: one read per page, plus the
    first poll's clock probe; a burst of 250, then 25 a second."""
    reads = math.ceil(entries / PAGE_SIZE) + 1
    return max(0.0, (reads - BURST) / REFILL), reads


def sdk_listing(run, entries, seconds):
    py = os.path.join(ROOT, "bench", ".venv", "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", os.path.join(ROOT, "bench", ".venv")], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-r", os.path.join(ROOT, "bench", "requirements.txt")], check=True)
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    env = dict(os.environ, REQUESTS_CA_BUNDLE=run.path("ca.pem"))
    try:
        p = subprocess.run([py, os.path.join(ROOT, "bench", "sdk_list.py"), run.dir,
                            "00000000-0000-4000-8000-000000000001", start, end],
                           env=env, capture_output=True, timeout=seconds, text=True)
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError) as e:
        return {"error": str(e)[:200]}


def catchup_run(name, capacity=None, n=None, span="50m"):
    n = n or env_int("LAT_N", 100000)
    arm_ms, ingest_ms = env_float("LAT_ARM_MS", 100), env_float("LAT_INGEST_MS", 25)
    args = ["--subscriptions", "1", "--rate", "0", "--backlog", str(n), "--backlog-span", span,
            "--backlog-succeeded-only", "--page-size", str(PAGE_SIZE), "--arm-tls", "--token-bucket",
            "--interval", "1m", "--window", "15m"]
    service_ms = env_float("LAT_SERVICE_MS", 50)
    if capacity:
        args += ["--endpoint-max-in-flight", str(capacity), "--endpoint-service-time", f"{service_ms:g}ms"]
    run = Run(name, args)
    try:
        run.proxy(arm_ms, ingest_ms)
        poller, samples = run.poller(["--once", "--since", "1h"], TIMEOUT, sample_every=env_float("LAT_SAMPLE_S", 10))
        final = run.report()
        proxy = run.proxy_stats()
        got = delivered(final)
        steady = rate_from(samples + [(poller["wall_s"], final)])
        polls = [l for l in run.poll_lines() if l.get("message") == "poll complete"]
        row = {
            "scenario": name, "entries": n, "arm_one_way_ms": arm_ms, "endpoint_one_way_ms": ingest_ms,
            "poller": poller, "delivered": got, "complete": got == n and poller["exit"] == 0,
            "missing": sum(len(s["missing"]) for s in final["subscriptions"]),
            "duplicates": sum(s["duplicates"] for s in final["subscriptions"]),
            "entries_per_s": round(got / poller["wall_s"], 1),
            "steady_entries_per_s": round(steady, 1) if steady else None,
            "poll_phase_s": round(polls[0]["took_ms"] / 1000, 1) if polls else None,
            "backlog_span": span,
            "endpoint": final["endpoint"],
            "arm_requests": sum(s["requests"] for s in final["subscriptions"]),
            "proxy": proxy,
            "samples": [(t, delivered(r), r["endpoint"]["requests"], r["endpoint"]["throttled"]) for t, r in samples],
        }
        if row["complete"]:
            row["seconds"] = poller["wall_s"]
        elif steady:
            row["seconds_extrapolated"] = round(poller["wall_s"] + (n - got) / steady)
        if capacity:
            cap = capacity / (service_ms / 1000)
            e = final["endpoint"]
            row["capacity_per_s"] = cap
            row["share_of_capacity"] = round((steady or row["entries_per_s"]) / cap, 4)
            row["throttled_share"] = round(e["throttled"] / e["requests"], 5) if e["requests"] else 0
        else:
            limit, reads = arm_budget_seconds(n)
            row["arm_budget_s"] = limit
            row["arm_reads"] = reads
            row["sdk"] = sdk_listing(run, n, TIMEOUT) if os.environ.get("LAT_SDK") != "0" else {}
        return row
    finally:
        run.close()


def catchup(out):
    row = catchup_run("catchup")
    write(out, "wan-catchup", row)
    secs = row.get("seconds") or row.get("seconds_extrapolated")
    sdk = row["sdk"].get("seconds")
    est = "" if row.get("seconds") else " (extrapolated from %s/s; timed out at %ss with %d delivered)" % (
        row["steady_entries_per_s"], row["poller"]["wall_s"], row["delivered"])
    summary(out, {"summary": "wan-catchup", "entries": row["entries"], "seconds": secs, "extrapolated": not row.get("seconds"),
                  "arm_budget_s": row["arm_budget_s"], "sdk_s": sdk,
                  "x_budget": round(secs / row["arm_budget_s"], 1) if secs and row["arm_budget_s"] else None,
                  "x_sdk": round(sdk / secs, 2) if secs and sdk else None},
            f"catch-up of {row['entries']:,}: {secs}s{est}; ARM budget limit {row['arm_budget_s']}s; SDK listing {sdk}s"
            f" | target: within 2x the budget (<= {2 * row['arm_budget_s']:g}s) and at least 5x the SDK (<= {round(sdk / 5, 1) if sdk else '?'}s)")


def burst(out):
    for n in [int(x) for x in os.environ.get("LAT_BURST_NS", "20000,100000").split(",")]:
        row = catchup_run("burst", n=n, span="10m")
        write(out, "wan-burst", row)
        secs = row.get("seconds") or row.get("seconds_extrapolated")
        sdk = row["sdk"].get("seconds")
        listing = row["poll_phase_s"]
        summary(out, {"summary": "wan-burst", "entries": n, "seconds": secs, "listing_s": listing,
                      "arm_budget_s": row["arm_budget_s"], "sdk_s": sdk,
                      "x_sdk": round(sdk / secs, 2) if secs and sdk else None,
                      "listing_x_budget": round(listing / row["arm_budget_s"], 2) if listing and row["arm_budget_s"] else None,
                      "peak_rss_mib": row["poller"].get("peak_rss_mib"), "poller_cpu_s": row["poller"].get("cpu_s"),
                      "bench_cpu_s": row["poller"].get("bench_cpu_s")},
                f"burst of {n:,} within 10 min, --since 1h: {secs}s end to end, listing {listing}s;"
                f" CPU-s poller {row['poller'].get('cpu_s')}, bench {row['poller'].get('bench_cpu_s')};"
                f" peak RSS {row['poller'].get('peak_rss_mib')} MiB;"
                f" ARM budget limit {row['arm_budget_s']}s; SDK listing {sdk}s"
                f" | target: at least 5x the SDK (<= {round(sdk / 5, 1) if sdk else '?'}s) and the listing within 2x the budget"
                f" (<= {2 * row['arm_budget_s']:g}s)")


def capacity(out):
    cap = env_int("LAT_CAPACITY", 64)
    row = catchup_run("capacity", capacity=cap)
    write(out, "wan-capacity", row)
    e = row["endpoint"]
    summary(out, {"summary": "wan-capacity", "capacity_per_s": row["capacity_per_s"],
                  "steady_entries_per_s": row["steady_entries_per_s"], "share_of_capacity": row["share_of_capacity"],
                  "requests": e["requests"], "throttled": e["throttled"], "throttled_share": row["throttled_share"],
                  "peak_in_flight": e["peak_in_flight"]},
            f"endpoint capped at {cap} in flight x {e['service_time_ms']} ms = {row['capacity_per_s']:g}/s:"
            f" delivered {row['steady_entries_per_s']}/s = {100 * row['share_of_capacity']:.1f}% of capacity,"
            f" {e['throttled']} 429s = {100 * row['throttled_share']:.2f}% of {e['requests']} requests, peak {e['peak_in_flight']} in flight"
            f" | target: >= 80% of capacity, 429s < 1%")


def fairness(out):
    backfill = env_int("LAT_BACKFILL", 200000)
    live = env_int("LAT_LIVE", 20)
    seconds = env_int("LAT_FAIR_SECONDS", 300)
    # An operation yields 2.2 entries on average (emulator/log.rs): 5 entries/s
    # is about 136 operations a minute.
    per_s = env_float("LAT_LIVE_ENTRIES_PER_S", 5)
    ops = per_s * 60 / 2.2
    subs = [f'[[subscription]]\nid = "00000000-0000-4000-8000-{1:012x}"\nrate_per_minute = 0\n'
            f'backlog = {backfill}\nbacklog_span = "50m"\nbacklog_succeeded_only = true\n']
    for i in range(live):
        subs.append(f'[[subscription]]\nid = "00000000-0000-4000-8000-{i + 2:012x}"\nrate_per_minute = {ops:.1f}\n')
    scenario = "seed = 7\npage_size = %d\narm_tls = true\n[azure]\ntoken_bucket = true\n\n%s" % (PAGE_SIZE, "\n".join(subs))
    run = Run("fairness", ["--arm-tls", "--interval", "1m", "--window", "15m"], scenario)
    backfill_id = "00000000-0000-4000-8000-000000000001"
    try:
        run.proxy(env_float("LAT_ARM_MS", 100), env_float("LAT_INGEST_MS", 25))

        def backfill_done(r):
            b = next(s for s in r["subscriptions"] if s["subscription"] == backfill_id)
            return b["delivered"] >= b["expected"]
        poller, samples = run.poller(["--since", "1h"], seconds, sample_every=15, stop_when=backfill_done)
        final = samples[-1][1] if poller["stopped_early"] else run.report()
        proxy = run.proxy_stats()
        b = next(s for s in final["subscriptions"] if s["subscription"] == backfill_id)
        lives = [s for s in final["subscriptions"] if s["subscription"] != backfill_id]
        p50 = statistics.median(s["lag_so_far_p50_ms"] for s in lives) / 1000
        p99 = max(s["lag_so_far_p99_ms"] for s in lives) / 1000
        row = {"scenario": "fairness", "backfill": backfill, "live_subscriptions": live,
               "live_entries_per_s_each": per_s, "interval_s": 60, "run": poller,
               "backfill_delivered": b["delivered"], "backfill_done": b["delivered"] >= b["expected"],
               "live_expected": sum(s["expected"] for s in lives), "live_delivered": sum(s["delivered"] for s in lives),
               "live_generated": sum(s["generated"] for s in lives),
               # Lags over every live entry visible by then, an undelivered
               # one counting as delivered at the end (a lower bound).
               "live_lag_p50_s_median_of_subs": round(p50, 1), "live_lag_p99_s_worst_sub": round(p99, 1),
               "live_lag_delivered_p99_s_worst_sub": round(max(s["lag_p99_ms"] for s in lives) / 1000, 1),
               "per_subscription": [{k: s[k] for k in ("subscription", "expected", "delivered", "lag_p50_ms", "lag_p99_ms",
                                                       "lag_so_far_p50_ms", "lag_so_far_p99_ms")} for s in final["subscriptions"]],
               "endpoint": final["endpoint"], "proxy": proxy,
               "samples": [(t, delivered(r)) for t, r in samples]}
        write(out, "wan-fairness", row)
        summary(out, {"summary": "wan-fairness", "live_lag_p50_s": row["live_lag_p50_s_median_of_subs"],
                      "live_lag_p99_s": row["live_lag_p99_s_worst_sub"], "backfill_delivered": b["delivered"],
                      "live_delivered": row["live_delivered"], "live_expected": row["live_expected"]},
                f"backfill of {backfill:,} ({b['delivered']:,} delivered in {poller['wall_s']}s) with {live} live subscriptions:"
                f" live lag p50 {row['live_lag_p50_s_median_of_subs']}s, p99 {row['live_lag_p99_s_worst_sub']}s"
                f" ({row['live_delivered']:,} of {row['live_expected']:,} live events delivered) | target: p99 < 120s (two intervals)")
    finally:
        run.close()


def schedule(out):
    n = env_int("LAT_SUBS", 1000)
    seconds = env_int("LAT_SCHED_SECONDS", 185)
    interval = 60
    run = Run("schedule", ["--subscriptions", str(n), "--rate", "0", "--arm-tls", "--token-bucket",
                           "--interval", "1m", "--window", "15m"])
    try:
        run.proxy(env_float("LAT_SCHED_ARM_MS", 250), env_float("LAT_INGEST_MS", 25))
        poller, _ = run.poller([], seconds)
        t0 = run.poller_started
        end = t0 + poller["wall_s"]
        final = run.report()
        proxy = run.proxy_stats()
        starts, failed = {}, 0
        for l in run.poll_lines():
            msg = l.get("message")
            if msg not in ("poll complete", "poll failed; retrying on the next interval"):
                continue
            if msg != "poll complete":
                failed += 1
            ts = l.get("timestamp")
            if not ts:
                continue
            done = parse_ts(ts)
            took = (l.get("took_ms") or 0) / 1000
            # The poll line's subscription fields (SUBSCRIPTION_ID in the journal).
            key = l.get("subscription_id") or l.get("subscription", "?")
            starts.setdefault(key, []).append(done - took)
        first_poll = min((min(v) for v in starts.values()), default=None)

        def on_time(origin):
            slots = made = 0
            k_max = int((end - origin) // interval)  # slots whose interval has closed
            keys = list(starts.keys())
            for k in range(k_max):
                lo, hi = origin + k * interval, origin + (k + 1) * interval
                for key in keys:
                    if any(lo - 1 <= s < hi for s in starts[key]):
                        made += 1
                slots += n
            return slots, made
        slots_p, made_p = on_time(t0)
        slots_f, made_f = on_time(first_poll) if first_poll else (0, 0)
        list_calls = sum(s["requests"] for s in final["subscriptions"])
        polls = sum(len(v) for v in starts.values())
        info = len(info_lines(run))
        row = {"scenario": "schedule", "subscriptions": n, "interval_s": interval, "arm_one_way_ms": run.arm_ms,
               "run": poller, "polls": polls, "polls_failed": failed, "subscriptions_polled": len(starts),
               "list_calls": list_calls,
               "first_poll_after_s": round(first_poll - t0, 1) if first_poll else None,
               "slots_from_process_start": slots_p, "on_time_from_process_start": made_p,
               "share_on_time_from_process_start": round(made_p / slots_p, 4) if slots_p else None,
               "slots_from_first_poll": slots_f, "on_time_from_first_poll": made_f,
               "share_on_time_from_first_poll": round(made_f / slots_f, 4) if slots_f else None,
               "info_lines": info, "info_lines_per_s": round(info / poller["wall_s"], 2),
               "proxy": proxy}
        write(out, "wan-schedule", row)
        summary(out, {"summary": "wan-schedule", "share_on_time": row["share_on_time_from_process_start"],
                      "share_on_time_from_first_poll": row["share_on_time_from_first_poll"],
                      "polls": polls, "list_calls": list_calls, "first_poll_after_s": row["first_poll_after_s"],
                      "cpu_share_of_one_core": poller.get("cpu_share_of_one_core"),
                      "peak_rss_mib": poller.get("peak_rss_mib"), "peak_threads": poller.get("peak_threads"),
                      "arm_peak_open_connections": proxy.get("arm", {}).get("peak_open_connections"),
                      "info_lines_per_s": row["info_lines_per_s"]},
                f"{n:,} subscriptions, 1-minute interval, ARM {run.arm_ms:g} ms one way, {poller['wall_s']}s:"
                f" {made_p:,} of {slots_p:,} scheduled polls on time ({100 * (row['share_on_time_from_process_start'] or 0):.1f}%;"
                f" {100 * (row['share_on_time_from_first_poll'] or 0):.1f}% counted from the first poll, {row['first_poll_after_s']}s after start);"
                f" {polls:,} polls, {list_calls:,} List calls; CPU {100 * (poller.get('cpu_share_of_one_core') or 0):.1f}% of a core,"
                f" peak RSS {poller.get('peak_rss_mib')} MiB ({poller.get('peak_threads')} threads at most,"
                f" {proxy.get('arm', {}).get('peak_open_connections')} ARM connections open at most),"
                f" {row['info_lines_per_s']} INFO lines/s"
                f" | target: >= 99% on time, first poll <= 30s, CPU <= 10%, RSS <= 48 MiB, < 1 line/s")
    finally:
        run.close()


def parse_ts(ts):
    # 2026-11-20T10:00:00.123456Z
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", ts)
    base = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return base + float(m.group(2) or 0)


def write(out, name, row):
    with open(os.path.join(out, name + ".jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def summary(out, value, line):
    with open(os.path.join(out, "wan-summary.jsonl"), "a") as f:
        f.write(json.dumps(value) + "\n")
    log(line)
    print(json.dumps(value), flush=True)


def main():
    args = sys.argv[1:]
    if len(args) < 2 or args[0] != "--out":
        sys.exit(__doc__)
    out, what = args[1], (args[2] if len(args) > 2 else "all")
    todo = {"catchup": catchup, "burst": burst, "capacity": capacity, "fairness": fairness, "schedule": schedule}
    if what == "all":
        for f in todo.values():
            f(out)
    elif what in todo:
        todo[what](out)
    else:
        sys.exit(f"unknown scenario {what!r}: catchup, burst, capacity, fairness, schedule or all")


main()
