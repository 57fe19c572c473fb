"""A throwaway local mail host for `scripts/run local`: the test host recipe, kept running.

    local_host.py start IP...   boot it in the background (daemon), print its state as JSON
    local_host.py stop          shut it down and delete it
    local_host.py send IP FROM  send a test message through one instance, wait for it at the sink,
                                print what arrived (DKIM-Signature included)

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from integration.testhost import TestHost  # noqa: E402

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
    current = state()
    if current and alive(current["pid"]):
        print(json.dumps(current, indent=2))
        return
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
    print(STATE.read_text())


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


def send(ip: str, sender: str) -> None:
    current = state()
    if not current:
        sys.exit("no local host is running: scripts/run local")
    subject = f"mailfleet test through {ip} at {time.strftime('%H:%M:%S')}"
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "someone@example.org", subject
    mail["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    mail.set_content("A test message from scripts/run local.\n")
    # smtplib inside the host's namespace (the instance IPs exist only there).
    code = ("import smtplib,sys,email; m=email.message_from_string(sys.stdin.read()); "
            f"c=smtplib.SMTP({ip!r}, 25, timeout=30); c.send_message(m); c.quit()")
    subprocess.run(["ip", "netns", "exec", current["netns"], sys.executable, "-c", code],
                   input=mail.as_string(), text=True, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in sorted(Path(current["sink"]).glob("*.json")):
            received = json.loads(path.read_text())
            if f"Subject: {subject}" in received["data"]:
                print(f"arrived at the sink from {received['peer']} (HELO {received['helo']}), saved as {path}:\n")
                print(received["data"].split("\r\n\r\n")[0].split("\n\n")[0])
                return
        time.sleep(0.5)
    sys.exit(f"{subject!r} did not reach the sink within 60 s (queued? postqueue -p on the host)")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "serve":
        serve(args)
    elif command == "start":
        start(args)
    elif command == "stop":
        stop()
    elif command == "send":
        send(args[0], args[1])
    else:
        sys.exit(__doc__)
