"""Apply for real: the real __main__.py deploys onto a systemd Debian host over SSH, then mail flows.

The program runs under RealMocks: keys and certificates are really generated and every
`remote.Command` really runs over SSH on the test host (a Debian system booted with
systemd-nspawn in a network namespace of this test's own). The whole module runs once on Debian 12
(bookworm) and once on Debian 13 (trixie), each with its own host and state. The tests run in
file order and share one host: deploy, prove the mail path, re-apply, change, restart, remove.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid

import dkim
import pulumi
import pytest

from harness import run_program
from integration.real_mocks import DYNAMIC, PROVIDER_KEY, RealMocks, plain
from integration.testhost import OUTSIDE_CLIENT_IP, SUITES, TestHost, booted

pytestmark = pytest.mark.integration

INSTANCES = [
    {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"},
    {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com"},
    {"name": "postfix-47", "ip": "127.0.0.47", "hostname": "s47.mail.example.com"},
]
DOMAINS = {"example.com": "s1", "example.net": "s2"}
RELAY_CLIENT = "198.51.100.7"  # inside relayNetworks; a documentation address on the namespace's lo
SINK = "[127.0.0.1]:2525"
MANAGED_FILES = ("/etc/postfix /etc/postfix-4* /etc/mailfleet /etc/opendkim /etc/opendkim.conf"
                 " /etc/systemd/system/opendkim.service.d")
SECURITY_GOAL = 3.0  # `systemd-analyze security` exposure of the signing unit, at most

figures: dict[str, float] = {}


def config_for(host: TestHost, instances=INSTANCES, **overrides) -> dict[str, str]:
    config = {
        "mailfleet:hosts": [{"name": "mailtest", "address": "127.0.0.1", "instances": instances}],
        "mailfleet:sshPrivateKey": host.ssh_private_key,
        "mailfleet:dkim": [{"domain": d, "selector": s} for d, s in DOMAINS.items()],
        "mailfleet:relayNetworks": ["198.51.100.0/24"],
        "mailfleet:relayhost": SINK,
        "mailfleet:mailName": "WebMAX",
        **overrides,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


class StatefulMocks(RealMocks):
    """Like the engine with its state: a resource whose inputs did not change keeps its outputs
    (the same keys and certificates on every apply). Commands and uploads always run, which is
    stricter than the engine, which runs only those whose inputs changed (and the state is kept per
    suite, while each module has a host of its own); with `commands_like_the_engine`, they too run
    only when their inputs changed. A dynamic resource is diffed against its outputs by its own
    provider and updated when that finds a change, and `refresh` runs their reads, as the engine
    does."""

    def __init__(self, connect, state: dict, commands_like_the_engine: bool = False):
        super().__init__(connect)
        self.state = state
        self.commands_like_the_engine = commands_like_the_engine

    def new_resource(self, args):
        if args.typ.startswith(DYNAMIC) and not args.resource_id and not pulumi.runtime.is_dry_run():
            return self._dynamic(args)
        if args.typ.startswith("command:remote:") and not self.commands_like_the_engine:
            return super().new_resource(args)
        fingerprint = json.dumps(plain(args.inputs), sort_keys=True, default=str)
        previous = self.state.get((args.typ, args.name))
        if previous and previous[0] == fingerprint:
            return previous[1]
        result = super().new_resource(args)
        self.state[(args.typ, args.name)] = (fingerprint, result)
        return result

    def _dynamic(self, args):
        previous = self.state.get((args.typ, args.name))
        if previous is None:
            result = super().new_resource(args)  # create
        else:
            id_, olds = previous[1]
            news = {k: v for k, v in plain(args.inputs).items() if k != PROVIDER_KEY}
            provider = self.dynamic_provider(args.inputs)
            if provider.diff(id_, plain(olds), news).changes:
                outs = provider.update(id_, plain(olds), news).outs
                self.log.append({"type": args.typ, "name": args.name, "updated": True})
                result = id_, {**outs, PROVIDER_KEY: args.inputs[PROVIDER_KEY]}
            else:
                result = previous[1]
        self.state[(args.typ, args.name)] = (None, result)
        return result

    def refresh(self) -> dict[str, dict]:
        """`pulumi refresh` of the dynamic resources: each one's read replaces its outputs.
        Resource name -> its outputs as read."""
        read = {}
        for (typ, name), (fingerprint, (id_, outs)) in list(self.state.items()):
            if typ.startswith(DYNAMIC):
                result = self.dynamic_provider(outs).read(id_, plain(outs))
                self.state[(typ, name)] = (fingerprint, (result.id, {**result.outs, PROVIDER_KEY: outs[PROVIDER_KEY]}))
                read[name] = result.outs
        return read


STATE: dict[str, dict] = {}  # per suite: the engine's state of that suite's stack


def apply(host: TestHost, config: dict[str, str], state: dict[str, dict] = STATE,
          secret_keys: tuple[str, ...] = ("mailfleet:sshPrivateKey",)):
    """Runs the program against the host with a module's engine state (per suite); the run, its
    mocks and the seconds it took."""
    mocks = StatefulMocks(host.connect, state.setdefault(host.suite, {}))
    started = time.monotonic()
    run = run_program(config, mocks, secret_keys=list(secret_keys), stack="integration")
    return run, mocks, time.monotonic() - started


def step_output(mocks: RealMocks) -> str:
    return "\n".join(e.get("stdout") or "" for e in mocks.log if e["type"] == "command:remote:Command")


@pytest.fixture(scope="module")
def host(suite):
    started = time.monotonic()
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=suite) as test_host:
        figures[f"{SUITES[suite]} host start s"] = round(time.monotonic() - started, 1)
        yield test_host
    figures[f"{SUITES[suite]} suite s"] = round(time.monotonic() - started, 1)


def unit(host: TestHost, name: str) -> str:
    """The systemd unit of an instance as the suite's Postfix package names it (docs/host.md, "Supported targets")."""
    if host.suite == "bookworm":
        return f"postfix@{name}"
    return "postfix" if name == "-" else f"postfix@{name.removeprefix('postfix-')}"


@pytest.fixture(scope="module")
def deployed(host):
    run, mocks, seconds = apply(host, config_for(host))
    figures[f"{SUITES[host.suite]} first apply s"] = round(seconds, 1)
    figures[f"{SUITES[host.suite]} remote commands"] = sum(1 for e in mocks.log if e["type"] == "command:remote:Command")
    assert "installed postfix opendkim opendkim-tools" in step_output(mocks)
    return {"run": run, "mocks": mocks}


# ---- helpers that read the host ----

def master_pid(host: TestHost, name: str) -> int:
    directory = "/var/spool/postfix" if name == "-" else f"/var/spool/{name}"
    return int(host.run(f"cat {directory}/pid/master.pid")[1].split()[0])


def service_pids(host: TestHost) -> dict[str, int]:
    pids = {i["name"]: master_pid(host, i["name"]) for i in INSTANCES if instance_listed(host, i["name"])}
    pids["default"] = master_pid(host, "-")
    pids["signer"] = int(host.run("systemctl show -p MainPID --value opendkim")[1])
    return pids


def file_states(host: TestHost, paths: str = MANAGED_FILES) -> dict[str, str]:
    """Path -> content hash, mode, owner, group and mtime of every file below `paths` (by default,
    every file mailfleet manages)."""
    out = host.run(f"find {paths} -type f -printf '%p %m %u %g %T@ ' -exec sha256sum {{}} \\; 2>/dev/null",
                   check=False)[1]
    return {line.split()[0]: " ".join(line.split()[1:6]) for line in out.splitlines() if line.strip()}


def without_mtimes(states: dict[str, str]) -> dict[str, str]:
    """file_states without the mtimes: content, mode, owner and group (a file put back is new)."""
    return {path: " ".join(state.split()[:3] + state.split()[4:]) for path, state in states.items()}


# Host-wide files that name every instance: they change with the set of instances.
INSTANCE_LISTS = ("/etc/postfix/main.cf", "/etc/mailfleet/deliveries.json")


def instance_listed(host: TestHost, name: str) -> bool:
    return f" /etc/{name} " in f" {host.run('postconf -h multi_instance_directories')[1].replace(',', ' ').strip()} "


def listeners(host: TestHost) -> dict[str, set[int]]:
    """ip:port -> the master processes listening there. A Postfix service's children (smtpd) hold
    its listening socket too, so each holder counts as its Postfix master: itself or its parent."""
    parents = dict(tuple(map(int, line.split())) for line in host.run("ps -e -o pid=,ppid=")[1].splitlines())
    masters = {int(p) for p in host.run("cat /var/spool/postfix*/pid/master.pid")[1].split()}
    found: dict[str, set[int]] = {}
    for line in host.run("ss -Hltnp")[1].splitlines():
        holders = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        found[line.split()[3]] = {p if p in masters or p not in parents else parents[p] for p in holders}
    return found


def message(sender: str, subject: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "someone@example.org", subject
    mail["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    mail["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    mail.set_content(f"{subject}\nsent through mailfleet's test host.\n")
    return mail


def submit(host: TestHost, ip: str, mail: EmailMessage, source: str = RELAY_CLIENT):
    with host.smtp(ip, source=source) as client:
        client.send_message(mail)


def wait_for(host: TestHost, subject: str, timeout: float = 90) -> dict:
    """The message with this exact subject, once the sink has it; else what the queues and the log say."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for received in host.sink_messages():
            if f"Subject: {subject}\r\n" in received["data"]:
                return received
        time.sleep(0.5)
    queues = host.run("postqueue -p; for d in /etc/postfix-4*; do postqueue -c $d -p; done", check=False)[1]
    log = host.run("journalctl --no-pager -n 40 | grep -E 'postfix|opendkim'", check=False)[1]
    raise AssertionError(f"{subject!r} did not reach the sink in {timeout}s; queues:\n{queues}\nlog:\n{log}")


def verify_dkim(data: str, dkim_records: dict[str, str]) -> bool:
    """Verify against the stack's dkimRecords output alone, no real DNS."""
    def dnsfunc(name, timeout=5):
        return dkim_records.get(name.decode().rstrip("."), "").encode()
    return dkim.verify(data.encode(), dnsfunc=dnsfunc)


def fleet_ca_context(deployed) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=deployed["run"].outputs["tlsCaCertPem"])
    return context


# ---- 1. banners and listeners ----

def test_each_instance_answers_on_its_own_ip_with_its_hostname(host, deployed):
    for instance in INSTANCES:
        with host.connect(instance["ip"], 25) as sock:
            banner = sock.recv(512).decode()
            sock.sendall(b"QUIT\r\n")
        assert banner.startswith(f"220 {instance['hostname']} ESMTP WebMAX"), banner


def assert_each_instance_listens_alone(host: TestHost) -> dict[str, set[int]]:
    """Each instance IP on 25, 587 and 465 has exactly one listener, its instance's master; returns
    every listener found."""
    found = listeners(host)
    for instance in INSTANCES:
        pid = master_pid(host, instance["name"])
        for port in (25, 587, 465):
            assert found.get(f"{instance['ip']}:{port}") == {pid}, (instance["name"], port, found)
    return found


def assert_each_instance_sends_signed_mail(host: TestHost, dkim_records: dict[str, str], label: str):
    """Mail through each instance from each domain reaches the sink signed for that domain (verified
    against dkim_records alone), from the instance's own IP with its own HELO."""
    host.clear_sink()
    for instance in INSTANCES:
        for domain in DOMAINS:
            subject = f"{label} {instance['name']} {domain}"
            submit(host, instance["ip"], message(f"news@{domain}", subject))
            received = wait_for(host, subject)
            assert "DKIM-Signature:" in received["data"]
            assert f"d={domain};" in received["data"].replace("\r\n\t", " ").replace("\n\t", " ")
            assert verify_dkim(received["data"], dkim_records), subject
            assert received["peer"] == instance["ip"], received["peer"]
            assert received["helo"] == instance["hostname"]


def test_each_ip_port_has_exactly_one_listener_its_instance_master(host, deployed):
    found = assert_each_instance_listens_alone(host)
    assert found.get("127.0.0.1:25") == {master_pid(host, "-")}
    assert not any(address.startswith(("0.0.0.0:", "*:")) and address.endswith((":25", ":587", ":465"))
                   for address in found), found


# ---- 2. TLS ----

def test_tls_on_25_587_465_with_a_certificate_for_the_instance_hostname(host, deployed):
    for instance in INSTANCES:
        context = fleet_ca_context(deployed)
        for port in (25, 587):
            with host.smtp(instance["ip"], port=port) as client:
                client._host = instance["hostname"]  # the name the certificate must carry
                client.starttls(context=context)
                assert client.sock.version().startswith("TLS")
        with host.smtp(instance["ip"], port=465, implicit_tls=True, ssl_context=context) as client:
            assert client.sock.version().startswith("TLS")
            assert client.sock.getpeercert()["subjectAltName"][0] == ("DNS", instance["hostname"])


# ---- 3. signed mail leaves from the instance's own IP with its own HELO ----

def test_mail_from_each_instance_and_domain_is_signed_and_sent_from_its_ip(host, deployed):
    dkim_records = deployed["run"].outputs["dkimRecords"]
    assert set(dkim_records) == {f"{s}._domainkey.{d}" for d, s in DOMAINS.items()}
    assert_each_instance_sends_signed_mail(host, dkim_records, "signed")


# ---- 4. no open relay ----

def test_a_client_outside_relay_networks_cannot_relay(host, deployed):
    for instance in INSTANCES:
        where = (instance["name"], 25)
        with host.smtp(instance["ip"], source=OUTSIDE_CLIENT_IP) as client:
            client.ehlo("outside.example")
            assert client.mail("spam@example.com")[0] == 250
            code, reply = client.rcpt("victim@example.org")
            # No recipient was accepted, so there is no message to send: DATA is refused.
            data_code, data_reply = client.docmd("DATA")
        assert code == 554 and b"Relay access denied" in reply, (where, code, reply)
        assert data_code in (503, 554), (where, data_code, data_reply)
        # 587 and 465 serve relay clients only: an outsider is turned away at the greeting
        # (smtpd_delay_reject = no applies the client restriction at connect).
        for port in (587, 465):
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                host.smtp(instance["ip"], port=port, source=OUTSIDE_CLIENT_IP, implicit_tls=port == 465)
            assert refused.value.smtp_code == 554, (instance["name"], port, refused.value)
            assert b"Client host rejected: Access denied" in refused.value.smtp_error, (instance["name"], port)


def test_opendkim_runs_unprivileged_hardened_and_only_postfix_reaches_it(host, deployed):
    pid = host.run("systemctl show -p MainPID --value opendkim")[1].strip()
    assert host.run(f"ps -o user=,group= -p {pid}")[1].split() == ["opendkim", "opendkim"]
    assert host.run(f"grep CapEff /proc/{pid}/status")[1].split()[1] == "0000000000000000"
    assert host.run("stat -c '%U:%G %a' /var/spool/opendkim/opendkim.sock")[1].strip() == "opendkim:postfix 770"
    host.run("cat >/tmp/connect.lua <<'EOF'\n"
             'if mt.connect("unix:/var/spool/opendkim/opendkim.sock") == nil then error("no connection") end\n'
             "EOF\nchmod 644 /tmp/connect.lua")
    assert host.run("runuser -u postfix -- miltertest -s /tmp/connect.lua", check=False)[0] == 0
    rc, out, err = host.run("runuser -u nobody -- miltertest -s /tmp/connect.lua", check=False)
    assert rc != 0, (rc, out, err)
    # The hardening drop-in, scored by systemd itself (the probe has shown it signs under it).
    score = host.run("systemd-analyze security --no-pager opendkim.service | tail -n 1")[1]
    exposure = float(re.search(r"exposure level for opendkim.service: (\d+\.\d+)", score).group(1))
    figures[f"{SUITES[host.suite]} opendkim security exposure"] = exposure
    assert exposure <= SECURITY_GOAL, score


def test_each_signature_is_logged_with_its_queue_id_domain_and_selector(host, deployed):
    host.clear_sink()
    submit(host, INSTANCES[0]["ip"], message("news@example.net", "logged signature"))
    wait_for(host, "logged signature")
    queue_ids = re.findall(r"postfix-43/smtpd\[\d+\]: ([0-9A-F]{6,}): client=",
                           host.run("journalctl -t postfix-43/smtpd --no-pager -o short")[1])
    log = host.run("journalctl -u opendkim --no-pager -o cat")[1]
    assert f"{queue_ids[-1]}: DKIM-Signature field added (s=s2, d=example.net)" in log, log[-2000:]


# ---- 5. the signer down: deferred, never unsigned, never lost ----

def test_without_the_signer_mail_waits_and_leaves_signed_afterwards(host, deployed):
    host.clear_sink()
    host.run("systemctl stop opendkim")
    try:
        with host.smtp(INSTANCES[0]["ip"], source=RELAY_CLIENT) as client:
            client.ehlo("client.example")
            code, reply = client.mail("news@example.com")
        assert 400 <= code < 500, (code, reply)
        local = message("news@example.com", "held while the signer is down")
        host.run("postmulti -i postfix-45 -x sendmail -t -f news@example.com <<'EOF'\n"
                 + local.as_string() + "\nEOF")
        time.sleep(3)
        assert host.sink_messages() == []  # nothing left unsigned
    finally:
        host.run("systemctl start opendkim")
    received = wait_for(host, "held while the signer is down", timeout=120)
    assert verify_dkim(received["data"], deployed["run"].outputs["dkimRecords"])
    assert received["peer"] == INSTANCES[1]["ip"]


# ---- 6. re-apply changes nothing ----

def test_reapply_changes_no_file_and_restarts_nothing(host, deployed):
    files, pids = file_states(host), service_pids(host)
    _, mocks, seconds = apply(host, config_for(host))
    figures[f"{SUITES[host.suite]} re-apply s"] = round(seconds, 1)
    assert file_states(host) == files
    assert service_pids(host) == pids
    output = step_output(mocks)
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed) ", output, re.M), output


# ---- 7. one instance changed: only it changes ----

def test_changing_one_instance_touches_only_that_instance(host, deployed):
    def qmgr_pids() -> dict[int, int]:
        """master PID -> its qmgr's PID. A reload keeps the master's PID but starts a new qmgr."""
        processes = [line.split() for line in host.run("ps -e -o pid=,ppid=,comm=")[1].splitlines()]
        return {int(ppid): int(pid) for pid, ppid, comm in processes if comm == "qmgr"}

    files, pids, qmgrs = file_states(host), service_pids(host), qmgr_pids()
    cursor = re.search(r"-- cursor: (\S+)", host.run("journalctl -n 0 --show-cursor --no-pager")[1]).group(1)
    changed = [dict(i) for i in INSTANCES]
    changed[2]["hostname"] = "s47b.mail.example.com"
    _, mocks, _ = apply(host, config_for(host, instances=changed))
    after, after_pids = file_states(host), service_pids(host)
    differing = {path for path in set(files) | set(after) if files.get(path) != after.get(path)}
    assert differing == {"/etc/postfix-47/main.cf", "/etc/mailfleet/tls/postfix-47.pem"}, differing
    assert {k: v for k, v in after_pids.items() if k != "postfix-47"} == \
        {k: v for k, v in pids.items() if k != "postfix-47"}
    assert f"reloaded {unit(host, 'postfix-47')}" in step_output(mocks)
    # Nothing else was reloaded either: no other master logged a reload, no other unit had a reload
    # job, and every other master kept its qmgr.
    journal = [json.loads(line) for line in host.run(
        f"journalctl --after-cursor='{cursor}' -o json --no-pager")[1].splitlines() if line.strip()]
    reloaded = {m.group(1) for e in journal
                if (m := re.search(r"reload -- version \S+ configuration (\S+)", str(e.get("MESSAGE"))))}
    assert reloaded == {"/etc/postfix-47"}, reloaded
    assert {e.get("UNIT") for e in journal if e.get("JOB_TYPE") == "reload"} == {unit(host, 'postfix-47') + ".service"}
    after_qmgrs = qmgr_pids()
    for name, pid in pids.items():
        if name not in ("postfix-47", "signer"):
            assert after_qmgrs[pid] == qmgrs[pid], name
    assert after_qmgrs[after_pids["postfix-47"]] != qmgrs[pids["postfix-47"]]  # the probe can see a reload
    with host.smtp("127.0.0.47") as client:
        assert client.docmd("NOOP")[0] == 250
    rc, out, _ = host.run("postconf -c /etc/postfix-47 -h myhostname smtp_helo_name")
    assert out.split() == ["s47b.mail.example.com", "s47b.mail.example.com"]
    apply(host, config_for(host))  # back to the shared layout for the next tests


# ---- 8. the host restarts: everything comes back by itself ----

def test_after_a_reboot_every_instance_and_the_signer_come_back(host, deployed):
    host.restart()
    host.run("systemctl is-system-running --wait", check=False, timeout=120)
    assert host.run("systemctl is-active opendkim")[1].strip() == "active"
    for name in ["-", *(i["name"] for i in INSTANCES)]:
        # Each master runs under its own unit, so systemd stops, restarts and watches it.
        cgroup = host.run(f"cat /proc/{master_pid(host, name)}/cgroup")[1].strip()
        assert cgroup.endswith(f"/{unit(host, name)}.service"), (name, cgroup)
    found = listeners(host)
    for instance in INSTANCES:
        assert host.run(f"systemctl is-active {unit(host, instance['name'])}")[1].strip() == "active"
        assert host.run(f"systemctl is-enabled {unit(host, instance['name'])}")[1].strip() == "enabled"
        assert found.get(f"{instance['ip']}:25") == {master_pid(host, instance["name"])}
    host.clear_sink()
    submit(host, INSTANCES[2]["ip"], message("news@example.net", "after reboot"))
    received = wait_for(host, "after reboot")
    assert verify_dkim(received["data"], deployed["run"].outputs["dkimRecords"])


# ---- 9. an instance removed from the config is retired; the others are untouched ----

def test_removing_an_instance_retires_it_and_leaves_the_others(host, deployed):
    files, pids = file_states(host), service_pids(host)
    _, mocks, _ = apply(host, config_for(host, instances=INSTANCES[:2]))
    removed = deployed["mocks"].commands
    # The engine deletes what left the program, dependents first: the instance, then its TLS file.
    for name in ("postfix-47-config", "postfix-47-tls"):
        assert name not in mocks.commands
        rc, out, err = mocks.run_remote(removed[name]["connection"], removed[name]["delete"])
        assert rc == 0, err
    assert not instance_listed(host, "postfix-47")
    assert not any(a.startswith("127.0.0.47:") for a in listeners(host))
    assert host.run(f"systemctl is-enabled {unit(host, 'postfix-47')}", check=False)[1].strip() != "enabled"
    assert host.run(f"systemctl is-active {unit(host, 'postfix-47')}", check=False)[1].strip() != "active"
    assert "postfix-47" not in host.run("postmulti -l")[1]
    after = file_states(host)
    left = {p: s for p, s in files.items() if "postfix-47" not in p and p not in INSTANCE_LISTS}
    assert {p: after.get(p) for p in left} == left
    assert {k: v for k, v in service_pids(host).items()} == {k: v for k, v in pids.items() if k != "postfix-47"}
