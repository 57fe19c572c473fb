"""Metrics on a host: Prometheus endpoints for every Postfix instance, and a firewall in front of them.

- The queues: Debian's prometheus-postfix-exporter, one process per instance
  (mailfleet-postfix-exporter@NAME), reading that instance's showq and listening on the instance's
  own IP, port QUEUE_PORT. One port per instance: Debian's exporter reads one showq a process, and
  with every instance's exporter on its own IP the scrape target itself names the instance, with
  no aggregating proxy of mailfleet's own. Its log parser does not know postmulti's
  `postfix-NAME/...` program names, so its log counters would stay at zero: it reads /dev/null.
- The logs: Debian's mtail (mailfleet-mtail), one per host on LOG_PORT, counting the delivery log's
  records (deliveries by instance, IP, group, outcome and status class) and, from rsyslog's
  /var/log/mail.log, outgoing TLS and connection outcomes and OpenDKIM's signatures and errors
  (templates/etc/mailfleet/mtail/). rsyslog is there anyway: Debian's exporter depends on it.
- The signer probe (mailfleet-dkim-probe.timer): every minute one message to each OpenDKIM
  signer that has keys, as Postfix hands it (miltertest), timed; its log line becomes
  mailfleet_dkim_probe_seconds and mailfleet_dkim_probe_failures_total through mtail.
- nftables table `inet mailfleet_metrics`: both ports answer this host (loopback and its instance
  addresses) and mailfleet:metricsNetworks only; the exporters and mtail require it.

Nothing here carries a secret: counters, queue sizes and the names of instances, IPs, groups and
signing domains. Pure text: no Pulumi, no I/O besides reading the templates.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

from mailfleet import remote_scripts, render, signing
from mailfleet.config import DkimKey, Fleet, Host

QUEUE_PORT = 9154  # prometheus-postfix-exporter's own default, on each instance's IP
LOG_PORT = 3903  # mtail's own default, on every address of the host
PACKAGES = ("prometheus-postfix-exporter", "mtail", "nftables")
EXPORTER_UNIT = "mailfleet-postfix-exporter"
EXPORTER_UNIT_FILE = f"/etc/systemd/system/{EXPORTER_UNIT}@.service"
EXPORTER_ENV_DIR = "/etc/mailfleet/postfix-exporter"
MTAIL_UNIT = "mailfleet-mtail"
MTAIL_UNIT_FILE = f"/etc/systemd/system/{MTAIL_UNIT}.service"
MTAIL_PROGRAMS = "/etc/mailfleet/mtail"
MTAIL_SOURCES = render.TEMPLATES / "etc/mailfleet/mtail"
DELIVERY_LOG = "/var/log/mailfleet/deliveries.jsonl"  # mailfleet-deliveries writes it
MAIL_LOG = "/var/log/mail.log"  # rsyslog writes it (Debian's default rules)
PROBE_UNIT = "mailfleet-dkim-probe"
PROBE_UNIT_FILE = f"/etc/systemd/system/{PROBE_UNIT}.service"
PROBE_TIMER_FILE = f"/etc/systemd/system/{PROBE_UNIT}.timer"
PROBE_PROGRAM = "/usr/local/lib/mailfleet/dkim-probe.sh"
PROBE_SCRIPTS = "/etc/mailfleet/dkim-probe"  # SIGNER.lua, one a signer
PROBE_JOB = "mailfleet-dkim-probe"  # the queue id OpenDKIM logs the probe's signature under
FIREWALL_UNIT = "mailfleet-metrics-firewall"
FIREWALL_UNIT_FILE = f"/etc/systemd/system/{FIREWALL_UNIT}.service"
FIREWALL_RULES = "/etc/mailfleet/metrics.nft"
TABLE = "mailfleet_metrics"
# Debian's own exporter unit listens on every address, port 9154 (the instances' exporters could
# not bind) and reads only the default instance's queue: masked, so no upgrade starts it again.
DEBIAN_EXPORTER_UNIT = "prometheus-postfix-exporter"


def _listen(ip: str) -> str:
    return f"[{ip}]:{QUEUE_PORT}" if ":" in ip else f"{ip}:{QUEUE_PORT}"


def scrapers(host: Host, networks: Sequence[str]) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) prefixes allowed to scrape: the loopback, the host's instance addresses (a
    Prometheus on the host scraping an instance IP comes from it) and `networks`."""
    prefixes = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
                *(ipaddress.ip_network(instance.ip) for instance in host.instances),
                *(ipaddress.ip_network(network, strict=False) for network in networks)]
    collapsed = {version: [str(n) for n in ipaddress.collapse_addresses(p for p in prefixes if p.version == version)]
                 for version in (4, 6)}
    return collapsed[4], collapsed[6]


def scrape_configs(fleet: Fleet) -> list[dict]:
    """Prometheus `scrape_configs` for the fleet (the stack output `prometheusScrapeConfigs`).

    mailfleet-queue: every instance's exporter, labelled `instance` (the Postfix instance) and
    `host`; only its queue metrics are kept (its log counters stay at zero, module docstring).
    mailfleet-logs: every host's mtail, whose records carry their own `instance` label: honoured."""
    return [
        {"job_name": "mailfleet-queue",
         "static_configs": [{"targets": [_listen(instance.ip)], "labels": {"instance": instance.name, "host": host.name}}
                            for host, instance in fleet.instances],
         "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": "postfix_up|postfix_showq_.*",
                                     "action": "keep"}]},
        {"job_name": "mailfleet-logs", "honor_labels": True,
         "static_configs": [{"targets": [f"{_host_address(host)}:{LOG_PORT}"], "labels": {"host": host.name}}
                            for host in fleet.hosts]},
    ]


def _host_address(host: Host) -> str:
    # A VM is reached on its first instance IP, as the program reaches it over SSH.
    address = host.address if host.existing else host.instances[0].ip
    return f"[{address}]" if ":" in address else address


def programs() -> dict[str, str]:
    """The mtail programs, by file name."""
    return {path.name: path.read_text() for path in sorted(MTAIL_SOURCES.glob("*.mtail"))}


def probe_scripts(keys: Sequence[DkimKey]) -> dict[str, str]:
    """The signer probe's miltertest script for each signer that has a key, by installed path: a
    message from the first domain it signs for."""
    out = {}
    for signer in signing.signers(keys):
        domains = [key.domain for key in signing.signing_keys(keys, signer.algorithm)]
        if domains:
            out[f"{PROBE_SCRIPTS}/{signer.unit}.lua"] = render.render(
                "etc/mailfleet/dkim-probe.lua.j2", unit=signer.unit, socket=signer.milter,
                sender=f"dkim-probe@{domains[-1]}", job=PROBE_JOB)
    return out


def files(host: Host, networks: Sequence[str], keys: Sequence[DkimKey]) -> dict[str, str]:
    """Every metrics file of a host, by installed path."""
    v4, v6 = scrapers(host, networks)
    out = {
        FIREWALL_RULES: render.render("etc/mailfleet/metrics.nft.j2", table=TABLE, v4=v4, v6=v6,
                                      ports=[QUEUE_PORT, LOG_PORT]),
        FIREWALL_UNIT_FILE: render.render("etc/systemd/system/mailfleet-metrics-firewall.service.j2",
                                          table=TABLE, rules=FIREWALL_RULES),
        EXPORTER_UNIT_FILE: render.render("etc/systemd/system/mailfleet-postfix-exporter@.service.j2",
                                          env_dir=EXPORTER_ENV_DIR, port=QUEUE_PORT, firewall_unit=FIREWALL_UNIT),
        MTAIL_UNIT_FILE: render.render("etc/systemd/system/mailfleet-mtail.service.j2", programs=MTAIL_PROGRAMS,
                                       delivery_log=DELIVERY_LOG, mail_log=MAIL_LOG, port=LOG_PORT,
                                       firewall_unit=FIREWALL_UNIT),
        PROBE_PROGRAM: render.render("usr/local/lib/mailfleet/dkim-probe.sh.j2", scripts=PROBE_SCRIPTS),
        PROBE_UNIT_FILE: render.render("etc/systemd/system/mailfleet-dkim-probe.service.j2", program=PROBE_PROGRAM,
                                       identifier=PROBE_UNIT, mail_log=MAIL_LOG),
        PROBE_TIMER_FILE: render.render("etc/systemd/system/mailfleet-dkim-probe.timer.j2"),
        **probe_scripts(keys),
    }
    for instance in host.instances:
        out[f"{EXPORTER_ENV_DIR}/{instance.name}.env"] = (
            "# Managed by mailfleet: `pulumi refresh` reports edits here, and the next `pulumi up` undoes them.\n"
            f"LISTEN={_listen(instance.ip)}\n")
    for name, text in programs().items():
        out[f"{MTAIL_PROGRAMS}/{name}"] = text
    return out


def step(host: Host, networks: Sequence[str], keys: Sequence[DkimKey]) -> str:
    """The firewall, the exporters of this host's instances (and no others), mtail and the signer
    probe's timer, running with these files and probed: each endpoint answers with its metrics."""
    return remote_scripts.script(
        "metrics", files=files(host, networks, keys), instances=[(i.name, i.ip, _listen(i.ip)) for i in host.instances],
        **_common())


def delete_step() -> str:
    """On destroy: the units stopped, the firewall table gone, the files removed."""
    return remote_scripts.script("metrics_delete", **_common())


def _common() -> dict:
    return dict(exporter_unit=EXPORTER_UNIT, env_dir=EXPORTER_ENV_DIR, mtail_unit=MTAIL_UNIT,
                firewall_unit=FIREWALL_UNIT, table=TABLE, programs_dir=MTAIL_PROGRAMS, rules=FIREWALL_RULES,
                debian_exporter=DEBIAN_EXPORTER_UNIT, log_port=LOG_PORT, queue_port=QUEUE_PORT,
                probe_unit=PROBE_UNIT, probe_scripts=PROBE_SCRIPTS, probe_program=PROBE_PROGRAM,
                unit_files=[FIREWALL_UNIT_FILE, EXPORTER_UNIT_FILE, MTAIL_UNIT_FILE, PROBE_UNIT_FILE, PROBE_TIMER_FILE])
