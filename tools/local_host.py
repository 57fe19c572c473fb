"""A throwaway local mail host for `scripts/run local`: the test host recipe, kept running.

usage: local_host.py start IP...   boot it in the background (daemon) unless it runs, print its state
                                   as JSON ("new": whether it was booted now)
       local_host.py stop          shut it down and delete it
       local_host.py send IP FROM  send a test message through one instance, wait for it at the sink,
                                   print what arrived (DKIM-Signature included)
       local_host.py stack-file    print the demo's Pulumi.local.yaml (three instances)
       local_host.py ips FILE      print the instance IPs of a stack file, one a line
       local_host.py forget-host-steps EXPORT
                                   drop the steps that ran on a host (and what depends on them) from a
                                   `pulumi stack export` file, keeping the keys: for a new host

The host is a Debian 12 system booted with systemd-nspawn in a network namespace of its own
(tests/integration/testhost.py), with every instance IP on its `lo` and a mail sink on
127.0.0.1:2525 that keeps each message it receives. Its state (namespace, SSH key, sink folder,
daemon PID) lives in /run/mailfleet-local (MAILFLEET_LOCAL_DIR).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

STATE_DIR = Path(os.environ.get("MAILFLEET_LOCAL_DIR", "/run/mailfleet-local"))
STATE = STATE_DIR / "state.json"
LOG = STATE_DIR / "daemon.log"


def state() -> dict | None:
    return json.loads(STATE.read_text()) if STATE.exists() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def serve(ips: list[str]) -> None:
    """The daemon: boot the host, publish its state, keep it until SIGTERM."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from integration.testhost import TestHost

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host = TestHost(ips=ips).start()
    try:
        key_file = STATE_DIR / "ssh_key"
        key_file.write_text(host.ssh_private_key)
        key_file.chmod(0o600)
        partial = STATE.with_suffix(".partial")
        partial.write_text(json.dumps({"pid": os.getpid(), "netns": host.netns, "ips": ips,
                                       "sshKeyFile": str(key_file), "sink": str(host.workdir / "sink"),
                                       "sinkAddress": "127.0.0.1:2525"}, indent=2))
        partial.rename(STATE)
        stop.wait()
    finally:
        STATE.unlink(missing_ok=True)
        host.stop()


def start(ips: list[str]) -> None:
    """Print the host's state as JSON, with "new": whether this call booted it."""
    current = state()
    if current and alive(current["pid"]):
        print(json.dumps({**current, "new": False}, indent=2))
        return
    print("booting the local host (the first time builds its image: a few minutes)...", file=sys.stderr)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE.unlink(missing_ok=True)
    with open(LOG, "ab") as log:
        daemon = subprocess.Popen([sys.executable, __file__, "serve", *ips], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (STATE_DIR / "pid").write_text(f"{daemon.pid}\n")
    deadline = time.monotonic() + 900  # the first boot builds the image (a few minutes)
    while not STATE.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the local host did not start; see {LOG}:\n" + LOG.read_text(errors="replace")[-3000:])
        time.sleep(1)
    print(json.dumps({**json.loads(STATE.read_text()), "new": True}, indent=2))


def stop() -> None:
    pid_file = STATE_DIR / "pid"
    if not pid_file.exists():
        print("no local host is running")
        return
    pid = int(pid_file.read_text())
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 180
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    pid_file.unlink()
    (STATE_DIR / "ssh_key").unlink(missing_ok=True)
    print("local host stopped and deleted")


# Runs inside the host's namespace (the instance IPs exist only there): one line on failure,
# the server's own reply when there is one.
SMTP_CLIENT = """
import email, smtplib, sys
ip = sys.argv[1]
message = email.message_from_string(sys.stdin.read())
try:
    client = smtplib.SMTP(ip, 25, timeout=30)
    client.send_message(message)
    client.quit()
except smtplib.SMTPRecipientsRefused as error:
    (code, reply), = error.recipients.values()
    sys.exit(f"{ip} refused the recipient: {code} {reply.decode(errors='replace')}")
except smtplib.SMTPResponseException as error:
    sys.exit(f"{ip} answered {error.smtp_code} {error.smtp_error.decode(errors='replace')}")
except ConnectionRefusedError:
    sys.exit(f"nothing listens on {ip}:25: is it an instance of the stack? "
             "(scripts/run local -- pulumi stack output instances)")
except (OSError, smtplib.SMTPException) as error:
    sys.exit(f"no SMTP session with {ip}:25: {error or type(error).__name__}")
"""


def send(ip: str, sender: str) -> None:
    current = state()
    if not current:
        sys.exit("no local host is running: start it with scripts/run local")
    if "@" not in sender:
        sys.exit(f"the sender {sender!r} is not an address: scripts/run local --send IP [FROM@DOMAIN]")
    subject = f"mailfleet test through {ip} at {time.strftime('%H:%M:%S')}"
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "someone@example.org", subject
    mail["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    mail.set_content("A test message from scripts/run local.\n")
    sent = subprocess.run(["ip", "netns", "exec", current["netns"], sys.executable, "-c", SMTP_CLIENT, ip],
                          input=mail.as_string(), text=True, stderr=subprocess.PIPE)
    if sent.returncode != 0:
        reason = sent.stderr.strip().splitlines()[-1] if sent.stderr.strip() else f"exit status {sent.returncode}"
        sys.exit(f"not sent: {reason}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in sorted(Path(current["sink"]).glob("*.json")):
            received = json.loads(path.read_text())
            if f"Subject: {subject}" in received["data"]:
                print(f"arrived at the sink from {received['peer']} (HELO {received['helo']}), saved as {path}:\n")
                print(received["data"].split("\r\n\r\n")[0].split("\n\n")[0])
                return
        time.sleep(0.5)
    sys.exit(f"{subject!r} was accepted but did not reach the sink within 60 s: see the queue with "
             f"scripts/run local --ssh postqueue -c /etc/postfix-NAME -p")


# ---- the local stack -------------------------------------------------------------------------

DEMO_STACK = """\
# scripts/run local: a throwaway host in a network namespace of this machine (not in git).
# Yours to edit (the Day 2 runbooks work on it): scripts/run local deploys it as it is.
config:
  mailfleet:dkim:
    - {domain: example.com, selector: local1}
  mailfleet:relayhost: "[127.0.0.1]:2525"
  mailfleet:mailName: mailfleet-local
  mailfleet:hosts:
    - name: localmail
      address: 127.0.0.1
      instances:
        - {name: postfix-11, ip: 127.0.0.11, hostname: s11.local.example.com}
        - {name: postfix-12, ip: 127.0.0.12, hostname: s12.local.example.com}
        - {name: postfix-13, ip: 127.0.0.13, hostname: s13.local.example.com}
"""


def stack_ips(path: str) -> list[str]:
    """Every instance IP of a stack file, so that a new host has the addresses the user added."""
    import yaml

    config = (yaml.safe_load(Path(path).read_text()) or {}).get("config") or {}
    hosts = config.get("mailfleet:hosts") or []
    return [instance["ip"] for host in hosts if isinstance(host, dict)
            for instance in host.get("instances") or [] if isinstance(instance, dict) and "ip" in instance]


def forget_host_steps(path: str) -> None:
    """Drop every remote step (command:remote:*) and whatever depends on one from a stack export,
    so that the next `pulumi up` runs them all on a new host, with the keys the state already has."""
    exported = json.loads(Path(path).read_text())
    resources = exported["deployment"].get("resources") or []
    dropped = {r["urn"] for r in resources if r["type"].startswith("command:remote:")}
    while True:
        more = {r["urn"] for r in resources if r["urn"] not in dropped and (
            r.get("parent") in dropped or r.get("deletedWith") in dropped
            or dropped & set(r.get("dependencies") or [])
            or any(dropped & set(urns) for urns in (r.get("propertyDependencies") or {}).values()))}
        if not more:
            break
        dropped |= more
    exported["deployment"]["resources"] = [r for r in resources if r["urn"] not in dropped]
    Path(path).write_text(json.dumps(exported))
    if dropped:
        print(f"the local host is new: its {len(dropped)} steps run again, with the stack's keys", file=sys.stderr)


COMMANDS = {
    "serve": (None, lambda args: serve(args)),
    "start": ("IP...", lambda args: start(args)),
    "stop": ("", lambda args: stop()),
    "send": ("IP FROM", lambda args: send(args[0], args[1])),
    "stack-file": ("", lambda args: print(DEMO_STACK, end="")),
    "ips": ("FILE", lambda args: print("\n".join(stack_ips(args[0])))),
    "forget-host-steps": ("EXPORT", lambda args: forget_host_steps(args[0])),
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv:
        print("local_host.py: name a command: start, stop, send, ... (local_host.py --help)", file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"local_host.py: unknown command {command!r} (local_host.py --help)", file=sys.stderr)
        return 2
    shape, run = COMMANDS[command]
    needed = len(shape.split()) if shape else 0
    if shape is not None and (len(args) < needed if shape.endswith("...") else len(args) != needed):
        print(f"usage: local_host.py {command} {shape}".rstrip(), file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
