"""The bash scripts that the remote steps run on a host.

Each step's script travels as the command's stdin (so `pulumi preview` shows the text that
changes, and secrets never reach a command line): the library in remote_lib.sh, then the step,
rendered from templates/steps/NAME.sh.j2, with every file it installs inline as a quoted
here-document. Unlike the rest of templates/, which mirrors installed paths, templates/steps/
holds scripts that are run, not installed. Values reach the scripts through the `q` filter
(shell quoting). `runner` is the command itself: it saves the script to a private temp file and
runs it as root with nothing on stdin. Pure text.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mailfleet import render, shaping, tenants
from mailfleet.config import Fleet, Host, Instance

LIBRARY = (Path(__file__).resolve().parent / "remote_lib.sh").read_text()
_EOF = "MAILFLEET_EOF"
# Postfix, what signing needs (mailfleet/signing.py: OpenDKIM, its tools, miltertest for the probe),
# Dovecot's core (the tenants' SASL backend), python3 (mailfleet-shaping-map, mailfleet-deliveries,
# mailfleet-webhook), python3-systemd (the delivery log reads the journal in-process, through
# libsystemd's sd-journal),
# logrotate (the delivery log's rotation) and the metrics' exporter, mtail, rsyslog (whose
# /var/log/mail.log mtail reads) and nftables (mailfleet/metrics.py).
PACKAGES = ("postfix", "opendkim", "opendkim-tools", "miltertest", "dovecot-core", "python3", "python3-systemd",
            "logrotate", "prometheus-postfix-exporter", "mtail", "rsyslog", "nftables")
DPKG_LOCK_TIMEOUT = 300  # seconds the install waits for another apt/dpkg run to finish
STEPS = render.TEMPLATES / "steps"
# A VM's wanted addresses (IP/prefix a line), written by its network step: an address not listed
# goes when the last instance on it is retired.
VM_ADDRESSES = "/var/lib/mailfleet/vm-addresses"


def _put(path: str, owner: str, mode: str, content: str) -> str:
    """put_file with its content as a quoted here-document (nothing in it is expanded)."""
    if not content.endswith("\n"):
        content += "\n"
    if f"\n{_EOF}\n" in f"\n{content}":
        raise ValueError(f"{path}: content contains the here-document delimiter {_EOF}")
    return f"put_file {shlex.quote(path)} {owner} {mode} <<'{_EOF}'\n{content}{_EOF}"


def _heredoc(content: str) -> str:
    """The body of a quoted here-document that the template closes with {{ eof }}."""
    if not content.endswith("\n"):
        content += "\n"
    if f"\n{_EOF}\n" in f"\n{content}":
        raise ValueError(f"content contains the here-document delimiter {_EOF}")
    return content


# bash's ${#array[@]} would open a jinja comment.
_env = render.environment(STEPS, comment_start_string="<%#", comment_end_string="#%>")
_env.filters["q"] = shlex.quote
_env.filters["heredoc"] = _heredoc
_env.globals.update(put_file=_put, eof=_EOF)


def step_names() -> list[str]:
    return sorted(path.name.removesuffix(".sh.j2") for path in STEPS.glob("*.sh.j2"))


def script(step: str, **context) -> str:
    return f"{LIBRARY}\n" + _env.get_template(f"{step}.sh.j2").render(**context)


def runner(ssh_user: str) -> str:
    """The `create` command: stdin holds the script; root through sudo for a non-root user."""
    sudo = "" if ssh_user == "root" else "sudo -n "
    return f"""set -e; umask 077; f=$(mktemp); trap 'rm -f "$f"' EXIT; cat >"$f"; {sudo}bash "$f" </dev/null"""


def for_step(step: str, script: str) -> str:
    """The script as step STEP runs it: the library records the files it installs under that name
    (/var/lib/mailfleet/checksums), which the drift check compares with the host."""
    return f"mailfleet_step={shlex.quote(step)}\n{script}"


def without_library(script: str) -> str:
    """A step's script (for_step) less the library, which is the bulk of it: the drift check keeps
    the scripts it may run again in its state in this form."""
    return script.replace(f"\n{LIBRARY}\n", "\n", 1)


def with_library(script: str) -> str:
    """without_library undone: the script as its step runs it."""
    first, rest = script.split("\n", 1)
    return f"{first}\n{LIBRARY}\n{rest}"


def checksum_report() -> str:
    """Prints the record of installed files and each file as it is now (mailfleet/drift.py reads it)."""
    return f"{LIBRARY}\nreport_checksums\n"


def inline_command(script: str, ssh_user: str) -> str:
    """A command that carries its script in itself, for `delete`, which gets no stdin."""
    sudo = "" if ssh_user == "root" else "sudo -n "
    return f"""f=$(mktemp); trap 'rm -f "$f"' EXIT; cat >"$f" <<'{_EOF}_SCRIPT'
{script}{_EOF}_SCRIPT
{sudo}bash "$f" </dev/null"""


def preflight(host: Host) -> str:
    """Fail early, and clearly, when the host cannot take the configuration."""
    return script("preflight", host=host)


def network(host: Host) -> str:
    """A VM's instance IPs on its interface now, and in cloud-init's rendered config: adding or
    removing an IP needs no reboot, and the next boot renders the same from the new guestinfo."""
    addresses = [f"{instance.ip}/{host.network.prefix_length}" for instance in host.instances]
    return script("network", host=host, addresses=addresses, network_yaml=render.cloud_init_network(host),
                   wanted_file=VM_ADDRESSES)


def packages() -> str:
    """Install Postfix, OpenDKIM and Dovecot's core (the tenants' SASL backend) when missing; touch
    nothing when they are there."""
    return script("packages", packages=PACKAGES, lock_timeout=DPKG_LOCK_TIMEOUT)


def default_instance(fleet: Fleet, host: Host) -> str:
    """The default instance: 127.0.0.1 only, multi-instance on."""
    return script("default_instance", main_cf=render.default_main_cf(fleet, host))


def shaping_map(fleet: Fleet) -> str:
    """The shaping groups' MX lookup service when shaping is on, its absence when it is off."""
    files = render.shaping_map_files(fleet) if shaping.enabled(fleet) else {}
    probe_domain, probe_group = next(((domain, name) for name, group in fleet.shaping.groups.items()
                                      for domain in group.domains or ()), ("gmail.com", None))
    return script("shaping_map", files=files, **_shaping_map(),
                   probe_domain=probe_domain, probe_answer=f"OK {shaping.transport_name(probe_group)}:"
                   if probe_group else "NOTFOUND ")


def shaping_map_delete() -> str:
    return script("shaping_map", files={}, **_shaping_map(), probe_domain="", probe_answer="")


def _shaping_map() -> dict:
    return dict(unit=render.SHAPING_MAP_UNIT, unit_file=render.SHAPING_MAP_UNIT_FILE, program=render.SHAPING_MAP_PROGRAM,
                groups=render.SHAPING_MAP_GROUPS, socket=render.SHAPING_MAP_SOCKET,
                paths=[render.SHAPING_MAP_UNIT_FILE, render.SHAPING_MAP_PROGRAM, render.SHAPING_MAP_GROUPS])


def warmup(fleet: Fleet, host: Host) -> str:
    """The warm-up policy service and the plans of the host's warming instances, or their absence."""
    files, plans = render.warmup_files(fleet, host)
    probe = render.warming(fleet, host)
    return script("warmup", files=files, plans=plans, probe_instance=probe[0].name if probe else "", **_warmup())


def warmup_delete() -> str:
    return script("warmup", files={}, plans={}, probe_instance="", **_warmup())


def _warmup() -> dict:
    return dict(unit=render.WARMUP_UNIT, unit_file=render.WARMUP_UNIT_FILE, program=render.WARMUP_PROGRAM,
                release_unit=render.WARMUP_RELEASE_UNIT, release_unit_file=render.WARMUP_RELEASE_UNIT_FILE,
                timer=render.WARMUP_TIMER, timer_file=render.WARMUP_TIMER_FILE, socket=render.WARMUP_SOCKET,
                plans_dir=render.WARMUP_PLANS,
                paths=[render.WARMUP_UNIT_FILE, render.WARMUP_RELEASE_UNIT_FILE, render.WARMUP_TIMER_FILE,
                       render.WARMUP_PROGRAM])


def deliveries(fleet: Fleet, host: Host) -> str:
    """The delivery log service of the host: every instance's delivery attempts as JSON lines, and
    the back-offs they start (mailfleet/backoff.py)."""
    return script("deliveries", files=render.deliveries_files(fleet, host), **_deliveries())


def deliveries_delete() -> str:
    return script("deliveries", files={}, **_deliveries())


def _deliveries() -> dict:
    paths = [render.DELIVERIES_UNIT_FILE, render.DELIVERIES_PROGRAM, render.DELIVERIES_LIBRARY,
             render.DELIVERIES_BACKOFF_LIBRARY, render.DELIVERIES_CONFIG, render.DELIVERIES_LOGROTATE]
    return dict(unit=render.DELIVERIES_UNIT, unit_file=render.DELIVERIES_UNIT_FILE, user=render.DELIVERIES_USER,
                program=render.DELIVERIES_PROGRAM, library=render.DELIVERIES_LIBRARY,
                backoff_library=render.DELIVERIES_BACKOFF_LIBRARY, config=render.DELIVERIES_CONFIG,
                logrotate=render.DELIVERIES_LOGROTATE, log=render.DELIVERIES_LOG,
                state_dir=render.DELIVERIES_STATE.rsplit("/", 1)[0],
                backoff_dir=render.BACKOFF_STATE.rsplit("/", 1)[0], paths=paths)


def webhook(fleet: Fleet) -> str:
    """The delivery webhook service of a host, or its absence without deliveryWebhook. Secret when
    its settings hold the signing secret."""
    return script("webhook", files=render.webhook_files(fleet), **_webhook())


def webhook_delete() -> str:
    return script("webhook", files={}, **_webhook())


def _webhook() -> dict:
    paths = [render.WEBHOOK_UNIT_FILE, render.WEBHOOK_PROGRAM, render.WEBHOOK_SETTINGS]
    return dict(unit=render.WEBHOOK_UNIT, unit_file=render.WEBHOOK_UNIT_FILE, user=render.WEBHOOK_USER,
                program=render.WEBHOOK_PROGRAM, settings=render.WEBHOOK_SETTINGS,
                state_dir=render.WEBHOOK_STATE.rsplit("/", 1)[0], paths=paths)


def instance_tls(instance: Instance, bundle_pem: str) -> str:
    return script("instance_tls", instance=instance, directory=render.instance_dir(instance),
                   tls_dir=render.TLS_DIR, tls_file=render.tls_file(instance),
                   bundle=bundle_pem)


def instance_tls_delete(instance: Instance) -> str:
    return script("instance_tls_delete", instance=instance, tls_file=render.tls_file(instance))


def instance_config(fleet: Fleet, instance: Instance) -> str:
    return script("instance_config", name=instance.name, directory=render.instance_dir(instance),
                   ip=instance.ip, hostname=instance.hostname,
                   main_cf=render.instance_main_cf(fleet, instance),
                   master_cf=render.instance_master_cf(fleet, instance),
                   tables=render.instance_tables(fleet, instance))


def instance_delete(instance: Instance, drain_seconds: int = 30) -> str:
    """Retire an instance without losing mail: refuse while its queue still holds messages."""
    return script("instance_delete", name=instance.name, directory=render.instance_dir(instance),
                   tables=render.instance_table_paths(instance), drain_seconds=drain_seconds,
                   ip=instance.ip, wanted_file=VM_ADDRESSES)


_TENANTS = dict(conf=render.DOVECOT_CONF, passwd_dir=render.PASSWD_DIR, socket=render.AUTH_SOCKET,
                sender_map=render.TENANT_SENDER_MAP)


def tenant_credentials(fleet: Fleet, host: Host) -> str:
    """Dovecot as the SASL backend (auth only), a passwd-file per instance of this host with the
    password hashes of the tenants allowed there, and the tenants' sender map. Secret: it holds
    password hashes. With no tenants, no credentials stay and Dovecot is stopped."""
    hashes = {tenant.name: tenants.password_hash(tenant) for tenant in fleet.tenants}
    passwd_files = {render.passwd_file_path(instance): tenants.passwd_file(
        {tenant.name: hashes[tenant.name] for tenant in tenants.allowed(fleet, instance)})
        for instance in host.instances} if fleet.tenants else {}
    return script("tenants", passwd_files=passwd_files,
                   dovecot_confs={version: render.dovecot_conf(version) for version in render.DOVECOT_VERSIONS},
                   sender_map_text=render.tenant_sender_map(tenants.sender_owners(fleet)), **_TENANTS)


def tenant_credentials_delete() -> str:
    """On destroy: no credentials stay behind, and Dovecot, which served only them, stops."""
    return script("tenants_delete", **_TENANTS)
