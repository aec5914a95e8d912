#!/usr/bin/env python3
"""Lists activity log entries with the official Azure SDK for Python
(azure-mgmt-monitor, ActivityLogsOperations.list) from the emulator, and prints
one JSON line: entries, seconds, entries per second, peak RSS.

usage: sdk_list.py EMULATOR_DIR SUBSCRIPTION_ID START_RFC3339 END_RFC3339

Authentication is a minimal TokenCredential against the emulator's token
endpoint: the measurement is of listing, as in the poller's case, not of
signing in. TLS trust: REQUESTS_CA_BUNDLE=EMULATOR_DIR/ca.pem.
"""
import json, re, resource, sys, time, tomllib, urllib.parse

import requests
from azure.core.credentials import AccessToken
from azure.mgmt.monitor import MonitorManagementClient


class EmulatorCredential:
    def __init__(self, token_url, client_id, secret, ca):
        self.token_url, self.client_id, self.secret, self.ca = token_url, client_id, secret, ca

    def get_token(self, *scopes, **kwargs):
        r = requests.post(self.token_url, verify=self.ca, data={
            "grant_type": "client_credentials", "client_id": self.client_id,
            "client_secret": self.secret, "scope": " ".join(scopes)})
        r.raise_for_status()
        body = r.json()
        return AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))


def main():
    emu_dir, sub, start, end = sys.argv[1:5]
    with open(f"{emu_dir}/poller.toml", "rb") as f:
        cfg = tomllib.load(f)
    arm = cfg["azure"]["resource_manager_url"]
    login = cfg["azure"]["authority_host"]
    cred_cfg = cfg["credentials"]["emulator"]
    secret = open(f"{emu_dir}/client-secret").read().strip()
    ca = f"{emu_dir}/ca.pem"
    token_url = f"{login}/{cred_cfg['tenant_id']}/oauth2/v2.0/token"
    cred = EmulatorCredential(token_url, cred_cfg["client_id"], secret, ca)
    client = MonitorManagementClient(cred, sub, base_url=arm, credential_scopes=[f"{arm}/.default"],
                                     connection_verify=ca)
    flt = f"eventTimestamp ge '{start}' and eventTimestamp le '{end}'"
    t0 = time.monotonic()
    n = 0
    for _ in client.activity_logs.list(filter=flt):
        n += 1
    secs = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"entries": n, "seconds": round(secs, 3),
                      "entries_per_s": round(n / secs, 1) if secs else None,
                      "peak_rss_kib": peak}))

main()
