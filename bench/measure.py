#!/usr/bin/env python3
"""Runs a command; prints one JSON line: wall seconds, peak RSS (KiB), CPU seconds.

usage: measure.py [--env K=V ...] [--stderr FILE] -- COMMAND ARGS...
"""
import json, os, resource, subprocess, sys, time

def main():
    args = sys.argv[1:]
    env = dict(os.environ)
    save = None
    while args and args[0] in ("--env", "--stderr"):
        if args[0] == "--env":
            k, v = args[1].split("=", 1)
            env[k] = v
        else:
            save = args[1]
        args = args[2:]
    if args and args[0] == "--":
        args = args[1:]
    start = time.monotonic()
    proc = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.monotonic() - start
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if save:
        with open(save, "wb") as f:
            f.write(proc.stderr)
    print(json.dumps({
        "exit": proc.returncode,
        "wall_s": round(wall, 3),
        "peak_rss_kib": ru.ru_maxrss,
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "stderr_tail": proc.stderr.decode(errors="replace").splitlines()[-3:],
    }))

main()
