"""Render the files mailfleet installs, from the jinja2 templates under templates/.

Each template mirrors the path it is installed to (templates/etc/postfix/main.cf.j2 becomes
/etc/postfix/main.cf; templates/etc/postfix-instance/ stands for /etc/postfix-NAME/). Pure functions
of the validated configuration: no Pulumi, no I/O besides reading the templates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jinja2

from mailfleet import shaping
from mailfleet.config import Fleet, Host, Instance

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TLS_DIR = "/etc/mailfleet/tls"
MESSAGE_SIZE_LIMIT = 50 * 1024 * 1024  # bytes of a whole message, encoded attachments included
VM_USER = "mailfleet"  # the sudo user cloud-init creates on VMs; root login stays closed


def environment(directory: Path, **options) -> jinja2.Environment:
    """The jinja2 settings every template of mailfleet's is written for: a missing value is an
    error, and block tags leave no blank lines or indentation behind."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, **options)


_env = environment(TEMPLATES)


def render(template: str, **context) -> str:
    return _env.get_template(template).render(**context)


def instance_dir(instance: Instance) -> str:
    return f"/etc/{instance.name}"


def tls_file(instance: Instance) -> str:
    """Private key, certificate and chain in one root-only file (Postfix's smtpd_tls_chain_files)."""
    return f"{TLS_DIR}/{instance.name}.pem"


def mynetworks(fleet: Fleet) -> list[str]:
    return ["127.0.0.0/8", *fleet.relay_networks]


def signing_domains(fleet: Fleet) -> list[str]:
    """Every domain with a DKIM key, in config order (the first one names local mail's sender)."""
    return list(dict.fromkeys(key.domain for key in fleet.dkim))


def default_main_cf(fleet: Fleet, host: Host) -> str:
    first = host.instances[0]
    return render("etc/postfix/main.cf.j2", myhostname=f"local.{first.hostname}", relay_ip=first.ip,
                   myorigin=signing_domains(fleet)[0])


def instance_main_cf(fleet: Fleet, instance: Instance) -> str:
    from mailfleet import signing  # here, not above: signing renders its own files with this module
    return render(
        "etc/postfix-instance/main.cf.j2",
        tenants=bool(fleet.tenants),
        auth_socket=AUTH_SOCKET,
        sender_map=TENANT_SENDER_MAP,
        auth_rate_limit=AUTH_RATE_LIMIT,
        instance=instance,
        directory=instance_dir(instance),
        mail_name=fleet.mail_name,
        mynetworks=mynetworks(fleet),
        relayhost=fleet.relayhost,
        queue=fleet.queue,
        tls_file=tls_file(instance),
        signing_domains=[] if fleet.allow_unsigned_senders else signing_domains(fleet),
        milters=signing.milters(fleet.dkim),
        message_size_limit=MESSAGE_SIZE_LIMIT,
        shaping=_shaping(fleet, instance),
        shaping_map=SHAPING_MAP_SOCKET,
        backoff_map=shaping.backoff_map_name(instance) if shaping.reacts(fleet) else None,
        warmup_socket=WARMUP_SOCKET if instance.warmup and shaping.enabled(fleet) else None,
    )


def _shaping(fleet: Fleet, instance: Instance) -> list[shaping.GroupTransport]:
    """The groups' transports, then their slow back-off transports."""
    if not shaping.enabled(fleet):
        return []
    return shaping.transports(fleet, instance) + shaping.backoff_transports(fleet, instance)


def instance_master_cf(fleet: Fleet, instance: Instance) -> str:
    return render("etc/postfix-instance/master.cf.j2", instance=instance, tenants=bool(fleet.tenants),
                   shaping=_shaping(fleet, instance))


def instance_tables(fleet: Fleet, instance: Instance) -> dict[str, str]:
    """The lookup tables main.cf names, by installed path (beside main.cf)."""
    tables = {f"{instance_dir(instance)}/{name}": render(f"etc/postfix-instance/{name}.j2", instance=instance)
              for name in ("recipient_access", "header_checks", "body_checks")}
    if shaping.enabled(fleet):
        tables[f"{instance_dir(instance)}/transport_shaping"] = shaping.domain_table(fleet)
    return tables


def instance_table_paths(instance: Instance) -> list[str]:
    """Every table an instance may have (what its delete removes), whatever the configuration."""
    return [f"{instance_dir(instance)}/{name}"
            for name in ("recipient_access", "header_checks", "body_checks", "transport_shaping")]


# Tenants: Dovecot's auth service is the SASL backend of every instance on a host (the alternative to
# the Cyrus SASL library in Postfix's SASL_README: a socket, one passwd-file per instance, hashes).
# The socket is outside every chroot, like the signer's: smtpd runs unchrooted (master.cf).
DOVECOT_CONF = "/etc/dovecot/dovecot.conf"
DOVECOT_VERSIONS = ("2.3", "2.4")  # Debian 12 has 2.3, Debian 13 2.4, whose configuration differs
PASSWD_DIR = "/etc/dovecot/mailfleet"
AUTH_SOCKET_NAME = "auth-postfix"
AUTH_SOCKET = f"/run/dovecot/{AUTH_SOCKET_NAME}"
TENANT_SENDER_MAP = "/etc/mailfleet/tenant_senders"
# AUTH commands a minute from one client address outside mynetworks (Postfix's anvil), whatever
# their outcome: enough for an application that keeps its sessions open, few for a password guesser.
AUTH_RATE_LIMIT = 30


def passwd_file_path(instance: Instance) -> str:
    return f"{PASSWD_DIR}/{instance.name}.passwd"


def dovecot_conf(version: str) -> str:
    return render("etc/dovecot/dovecot.conf.j2", version=version, passwd_dir=PASSWD_DIR,
                   socket_name=AUTH_SOCKET_NAME)


def tenant_sender_map(owners: dict[str, list[str]]) -> str:
    return render("etc/mailfleet/tenant_senders.j2", owners=owners)


# The shaping groups' MX lookup (mailfleet/shaping_map.py, installed as is): one service for every
# instance on the host, asked through each instance's proxymap, which runs outside the chroot.
SHAPING_MAP_UNIT = "mailfleet-shaping-map"
SHAPING_MAP_UNIT_FILE = f"/etc/systemd/system/{SHAPING_MAP_UNIT}.service"
SHAPING_MAP_PROGRAM = "/usr/local/sbin/mailfleet-shaping-map"
SHAPING_MAP_GROUPS = "/etc/mailfleet/shaping-map.json"
SHAPING_MAP_SOCKET = "/run/mailfleet-shaping/map.sock"


# The active back-offs (mailfleet/backoff.py): written by the delivery log service, read by the map.
BACKOFF_STATE = "/var/lib/mailfleet-backoff/state.json"


def shaping_map_files(fleet: Fleet) -> dict[str, str]:
    """The service's program, its groups (domains and MX suffixes; the groups' slow transports)
    and its unit."""
    settings = {"groups": shaping.mx_groups(fleet)}
    if shaping.reacts(fleet):
        settings["backoffTransports"] = shaping.backoff_transport_names(fleet)
    groups = json.dumps(settings, indent=1, sort_keys=True) + "\n"
    return {
        SHAPING_MAP_PROGRAM: (Path(__file__).resolve().parent / "shaping_map.py").read_text(),
        SHAPING_MAP_GROUPS: groups,
        SHAPING_MAP_UNIT_FILE: render(f"etc/systemd/system/{SHAPING_MAP_UNIT}.service.j2", program=SHAPING_MAP_PROGRAM,
                                       groups=SHAPING_MAP_GROUPS, socket=SHAPING_MAP_SOCKET,
                                       backoff_state=BACKOFF_STATE if shaping.reacts(fleet) else None),
    }


def cloud_init_metadata(host: Host) -> str:
    # cloud-init re-applies the network section only when instance-id changes, so the id follows
    # the addresses: adding an IP to a VM's config reaches its netplan on the next boot.
    network = (host.network, tuple(i.ip for i in host.instances))
    instance_id = f"mailfleet-{host.name}-{hashlib.sha256(repr(network).encode()).hexdigest()[:12]}"
    return render("guestinfo/metadata.yaml.j2", host=host, instance_id=instance_id)


def cloud_init_network(host: Host) -> str:
    """The metadata's `network` section alone (netplan v2), for the VM's network step."""
    return render("guestinfo/network.yaml.j2", host=host)


def cloud_init_userdata(host: Host, authorized_keys: list[str]) -> str:
    return render("guestinfo/userdata.yaml.j2", host=host, user=VM_USER,
                   authorized_keys=[key.strip() for key in authorized_keys])


# Warm-up (mailfleet/warmup.py, installed as is): one policy service for every warming instance on
# the host, asked by their smtpd; a timer releases held mail within each day's budgets.
WARMUP_UNIT = "mailfleet-warmup"
WARMUP_UNIT_FILE = f"/etc/systemd/system/{WARMUP_UNIT}.service"
WARMUP_RELEASE_UNIT = f"{WARMUP_UNIT}-release.service"
WARMUP_RELEASE_UNIT_FILE = f"/etc/systemd/system/{WARMUP_RELEASE_UNIT}"
WARMUP_TIMER = f"{WARMUP_UNIT}-release.timer"
WARMUP_TIMER_FILE = f"/etc/systemd/system/{WARMUP_TIMER}"
WARMUP_PROGRAM = "/usr/local/sbin/mailfleet-warmup"
WARMUP_PLANS = "/etc/mailfleet/warmup"
WARMUP_STATE = "/var/lib/mailfleet/warmup"
WARMUP_SOCKET = "/run/mailfleet-warmup/policy.sock"


def warming(fleet: Fleet, host: Host) -> list[Instance]:
    """The host's instances with a warm-up plan (shaping's groups route their mail: not with a relayhost)."""
    return [instance for instance in host.instances if instance.warmup and shaping.enabled(fleet)]


def warmup_plan(instance: Instance) -> str:
    return json.dumps({"instance": instance.name, "start": instance.warmup.start,
                       "plan": instance.warmup.plan}, indent=1, sort_keys=True) + "\n"


def warmup_files(fleet: Fleet, host: Host) -> tuple[dict[str, str], dict[str, str]]:
    """The service's program and units, and the plans (by path), when an instance of the host warms up."""
    instances = warming(fleet, host)
    if not instances:
        return {}, {}
    values = dict(unit=WARMUP_UNIT, program=WARMUP_PROGRAM, socket=WARMUP_SOCKET, plans_dir=WARMUP_PLANS,
                  state_dir=WARMUP_STATE, map_socket=SHAPING_MAP_SOCKET, map_unit=SHAPING_MAP_UNIT)
    files = {
        WARMUP_PROGRAM: (Path(__file__).resolve().parent / "warmup.py").read_text(),
        WARMUP_UNIT_FILE: render(f"etc/systemd/system/{WARMUP_UNIT}.service.j2", **values),
        WARMUP_RELEASE_UNIT_FILE: render(f"etc/systemd/system/{WARMUP_RELEASE_UNIT}.j2", **values),
        WARMUP_TIMER_FILE: render(f"etc/systemd/system/{WARMUP_TIMER}.j2", **values),
    }
    return files, {f"{WARMUP_PLANS}/{instance.name}.json": warmup_plan(instance) for instance in instances}


# The delivery log (mailfleet/deliveries.py and mailfleet/bounces.py, installed as they are): one
# service for every instance on the host, reading the journal; logrotate rotates its file.
DELIVERIES_UNIT = "mailfleet-deliveries"
DELIVERIES_USER = "mailfleet-deliveries"
DELIVERIES_UNIT_FILE = f"/etc/systemd/system/{DELIVERIES_UNIT}.service"
DELIVERIES_PROGRAM = "/usr/local/sbin/mailfleet-deliveries"
DELIVERIES_LIBRARY = "/usr/local/lib/mailfleet-deliveries/bounces.py"
DELIVERIES_BACKOFF_LIBRARY = "/usr/local/lib/mailfleet-deliveries/backoff.py"
DELIVERIES_CONFIG = "/etc/mailfleet/deliveries.json"
DELIVERIES_LOGROTATE = "/etc/logrotate.d/mailfleet-deliveries"
DELIVERIES_LOG = "/var/log/mailfleet/deliveries.jsonl"
DELIVERIES_STATE = "/var/lib/mailfleet-deliveries/state.json"


def deliveries_config(fleet: Fleet, host: Host) -> str:
    """The host's name (as the stack names it) and each instance's source IP, by instance name
    (the default instance, `postfix`, sends from 127.0.0.1); when a group reacts to push-back, its
    patterns and minutes and the back-off state file (mailfleet/backoff.py)."""
    instances = {"postfix": "127.0.0.1", **{instance.name: instance.ip for instance in host.instances}}
    config = {"host": host.name, "instances": instances}
    if shaping.reacts(fleet):
        from mailfleet.backoff import rules_of
        config["pushBack"] = {"rules": rules_of(fleet.shaping.groups), "state": BACKOFF_STATE,
                              "instances": [instance.name for instance in host.instances]}
    return json.dumps(config, indent=1, sort_keys=True) + "\n"


def deliveries_files(fleet: Fleet, host: Host) -> dict[str, str]:
    """The service's program, its classifier, its settings, its unit and its logrotate entry."""
    here = Path(__file__).resolve().parent
    return {
        DELIVERIES_PROGRAM: (here / "deliveries.py").read_text(),
        DELIVERIES_LIBRARY: (here / "bounces.py").read_text(),
        DELIVERIES_BACKOFF_LIBRARY: (here / "backoff.py").read_text(),
        DELIVERIES_CONFIG: deliveries_config(fleet, host),
        DELIVERIES_UNIT_FILE: render(f"etc/systemd/system/{DELIVERIES_UNIT}.service.j2", program=DELIVERIES_PROGRAM,
                                     config=DELIVERIES_CONFIG, log=DELIVERIES_LOG, state=DELIVERIES_STATE,
                                     user=DELIVERIES_USER, backoff_state=BACKOFF_STATE),
        DELIVERIES_LOGROTATE: render("etc/logrotate.d/mailfleet-deliveries.j2", log=DELIVERIES_LOG,
                                     unit=DELIVERIES_UNIT),
    }


# The delivery webhook (mailfleet/webhook.py, installed as is): with deliveryWebhook set, one
# service per host POSTs the delivery log's records. Its settings hold the signing secret: root's
# file, readable by the service's group only (the step installs it 0640).
WEBHOOK_UNIT = "mailfleet-webhook"
WEBHOOK_USER = "mailfleet-webhook"
WEBHOOK_UNIT_FILE = f"/etc/systemd/system/{WEBHOOK_UNIT}.service"
WEBHOOK_PROGRAM = "/usr/local/sbin/mailfleet-webhook"
WEBHOOK_SETTINGS = "/etc/mailfleet/webhook.json"
WEBHOOK_STATE = "/var/lib/mailfleet-webhook/checkpoint.json"


def webhook_settings(fleet: Fleet) -> str:
    """The URL, the batch size and, when given, the signing secret (a secret itself, then)."""
    hook = fleet.delivery_webhook
    settings = {"url": hook.url, "batchSize": hook.batch_size}
    if hook.secret is not None:
        settings["secret"] = hook.secret
    return json.dumps(settings, indent=1, sort_keys=True) + "\n"


def webhook_files(fleet: Fleet) -> dict[str, str]:
    """The service's program and unit, and its settings; none without deliveryWebhook."""
    if fleet.delivery_webhook is None:
        return {}
    return {
        WEBHOOK_PROGRAM: (Path(__file__).resolve().parent / "webhook.py").read_text(),
        WEBHOOK_SETTINGS: webhook_settings(fleet),
        WEBHOOK_UNIT_FILE: render(f"etc/systemd/system/{WEBHOOK_UNIT}.service.j2", program=WEBHOOK_PROGRAM,
                                  settings=WEBHOOK_SETTINGS, log=DELIVERIES_LOG, state=WEBHOOK_STATE,
                                  user=WEBHOOK_USER, deliveries_unit=DELIVERIES_UNIT),
    }
