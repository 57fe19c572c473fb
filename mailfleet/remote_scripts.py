"""The bash scripts that the remote steps run on a host.

Each step's script travels as the command's stdin (so `pulumi preview` shows the text that
changes, and secrets never reach a command line): the library in remote_lib.sh, then the step,
with every file it installs inline as a quoted here-document. `RUNNER` is the command itself: it
saves the script to a private temp file and runs it as root with nothing on stdin. Pure text.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mailfleet import render
from mailfleet.config import DkimKey, Fleet, Host, Instance

LIBRARY = (Path(__file__).resolve().parent / "remote_lib.sh").read_text()
_EOF = "MAILFLEET_EOF"
PACKAGES = ("postfix", "opendkim", "opendkim-tools")


def runner(ssh_user: str) -> str:
    """The `create` command: stdin holds the script; root through sudo for a non-root user."""
    sudo = "" if ssh_user == "root" else "sudo -n "
    return f"""set -e; umask 077; f=$(mktemp); trap 'rm -f "$f"' EXIT; cat >"$f"; {sudo}bash "$f" </dev/null"""


def inline_command(script: str, ssh_user: str) -> str:
    """A command that carries its script in itself, for `delete`, which gets no stdin."""
    sudo = "" if ssh_user == "root" else "sudo -n "
    return f"""f=$(mktemp); trap 'rm -f "$f"' EXIT; cat >"$f" <<'{_EOF}_SCRIPT'
{script}{_EOF}_SCRIPT
{sudo}bash "$f" </dev/null"""


def _q(value: str) -> str:
    return shlex.quote(value)


def _put(path: str, owner: str, mode: str, content: str) -> str:
    if not content.endswith("\n"):
        content += "\n"
    if f"\n{_EOF}\n" in f"\n{content}":
        raise ValueError(f"{path}: content contains the here-document delimiter {_EOF}")
    return f"put_file {_q(path)} {owner} {mode} <<'{_EOF}'\n{content}{_EOF}\n"


def _script(title: str, body: str) -> str:
    return f"{LIBRARY}\n# ---- {title} ----\n{body}"


def preflight(host: Host) -> str:
    """Fail early, and clearly, when the host cannot take the configuration."""
    ips = " ".join(i.ip for i in host.instances)
    wait_for_cloud_init = "" if host.existing else (
        "# A new VM: let cloud-init finish the network and users first.\n"
        "if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null || true; fi\n")
    return _script(f"preflight for host {host.name}", f"""{wait_for_cloud_init}[ -d /run/systemd/system ] || fail "host {host.name} does not run systemd"
command -v apt-get >/dev/null || fail "host {host.name} is not Debian or Ubuntu (no apt-get)"
configured=$(ip -o -4 addr show | awk '{{split($4, a, "/"); print a[1]}}')
missing=()
for ip in {ips}; do
  grep -qxF "$ip" <<<"$configured" || missing+=("$ip")
done
if [ ${{#missing[@]}} -gt 0 ]; then
  fail "host {host.name} ($(hostname)) lacks instance IP(s) ${{missing[*]}}: configure them on an interface (netplan) first, then run pulumi up again"
fi
""")


def packages() -> str:
    """Install Postfix and OpenDKIM when missing; touch nothing when they are there."""
    names = " ".join(PACKAGES)
    return _script("packages", f"""missing=()
for package in {names}; do
  status=$(dpkg-query -W -f='${{Status}}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
if [ ${{#missing[@]}} -gt 0 ]; then
  # "No configuration": no main.cf and no started default instance; mailfleet writes its own.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt_install() {{ apt-get install -y -q -o Dpkg::Options::=--force-confold --no-install-recommends "${{missing[@]}}"; }}
  # Try without refreshing the lists first: hosts with the packages cached need no network.
  apt_install >/dev/null 2>&1 || {{ apt-get update -q >/dev/null && apt_install >/dev/null; }} || fail "could not install ${{missing[*]}}"
  echo "installed ${{missing[*]}}"
fi
""")


def default_instance(fleet: Fleet, host: Host) -> str:
    """The default instance: 127.0.0.1 only, multi-instance on. multi_instance_directories belongs
    to postmulti (create and destroy edit it), so its current value is carried over."""
    return _script("default Postfix instance", f"""lock_default_main_cf
directories=$(postconf -h multi_instance_directories 2>/dev/null || true)
put_file /etc/postfix/main.cf root:root 0644 < <(cat <<'{_EOF}'
{render.default_main_cf(fleet, host)}{_EOF}
echo "multi_instance_directories = $directories")
validate "postfix check" postfix check
keep_changes
action=none
if any_changed; then action=reload; fi
systemctl enable -q postfix.service
ensure_service postfix@- "$action"
""")


def dkim_keys(private_keys: dict[DkimKey, str]) -> str:
    """The DKIM private keys, readable by opendkim only (it refuses keys others can read)."""
    body = "install -d -m 0750 -o root -g opendkim /etc/opendkim /etc/opendkim/keys\n"
    for key, pem in private_keys.items():
        body += f"install -d -m 0750 -o opendkim -g opendkim {_q(f'{render.DKIM_KEY_DIR}/{key.domain}')}\n"
        body += _put(render.dkim_key_file(key), "opendkim:opendkim", "0600", pem)
    body += """keep_changes
for unit in opendkim opendkim-ed25519; do
  if any_changed && systemctl is-active -q "$unit"; then
    systemctl reload "$unit"
    echo "reloaded $unit"
  fi
done
"""
    return _script("DKIM keys", body)


def dkim_keys_delete() -> str:
    """On destroy (after every instance is gone): no private key stays behind, nothing signs."""
    return _script("remove DKIM keys", f"""systemctl disable -q --now opendkim 2>/dev/null || true
rm -rf {render.DKIM_KEY_DIR}
echo "removed DKIM keys"
""")


def dkim_config(fleet: Fleet) -> str:
    files = render.opendkim_files(fleet)
    body = "".join(_put(path, "root:root", "0644", content) for path, content in files.items())
    for signer in render.signers(fleet):
        body += f'validate "opendkim -n -x {signer.conf}" opendkim -n -x {signer.conf}\n'
    wanted = " ".join(_q(render.dkim_key_file(key)) for key in fleet.dkim)
    # The milter sockets' directory: setgid group postfix, so a socket is reachable by Postfix only.
    body += f"install -d -m 2750 -o opendkim -g postfix {render.MILTER_SOCKET_DIR}\n"
    body += f"""keep_changes
# Keys that the tables no longer name are retired only now that nothing refers to them.
wanted=" {wanted} "
while IFS= read -r -d '' file; do
  if [[ "$wanted" != *" $file "* ]]; then rm -f "$file"; changed+=("$file"); echo "removed $file"; fi
done < <(find {render.DKIM_KEY_DIR} -name '*.private' -type f -print0)
"""
    ed = render.ED25519_SIGNER
    if ed in render.signers(fleet):
        body += f"""if any_changed {render.ED25519_UNIT_FILE}; then systemctl daemon-reload; fi
"""
    else:  # no Ed25519 key (any more): its signer goes; Postfix no longer names its socket
        body += f"""if [ -e {render.ED25519_UNIT_FILE} ]; then
  systemctl disable -q --now {ed.unit} 2>/dev/null || true
  rm -rf {render.ED25519_UNIT_FILE} {ed.conf} {ed.tables}
  systemctl daemon-reload
  echo "removed {ed.unit}"
fi
"""
    for signer in render.signers(fleet):
        body += f"""action=none
if any_changed {signer.tables}/KeyTable {signer.tables}/SigningTable /etc/opendkim/TrustedHosts; then action=reload; fi
# The socket is bound at start: a new configuration file needs a restart, not a reload.
if any_changed {signer.conf}{' ' + render.ED25519_UNIT_FILE if signer is ed else ''}; then action=restart; fi
ensure_service {signer.unit} "$action"
"""
    return _script("OpenDKIM configuration", body)


def instance_tls(instance: Instance, bundle_pem: str) -> str:
    unit = f"postfix@{instance.name}"
    body = f"install -d -m 0700 -o root -g root {render.TLS_DIR}\n"
    body += _put(render.tls_file(instance), "root:root", "0600", bundle_pem)
    body += f"""keep_changes
if any_changed && systemctl is-active -q {unit}; then
  systemctl reload {unit}
  echo "reloaded {unit}"
fi
"""
    return _script(f"TLS for {instance.name}", body)


def instance_tls_delete(instance: Instance) -> str:
    return _script(f"remove TLS of {instance.name}", f"rm -f {render.tls_file(instance)}\n")


def instance_config(fleet: Fleet, instance: Instance) -> str:
    name, directory = instance.name, render.instance_dir(instance)
    body = f"""lock_default_main_cf
if ! instance_exists {name}; then
  postmulti -I {name} -G mail -e create
  echo "created instance {name}"
fi
old_interfaces=$(postconf -c {directory} -h inet_interfaces)
"""
    body += _put(f"{directory}/main.cf", "root:root", "0644", render.instance_main_cf(fleet, instance))
    body += _put(f"{directory}/master.cf", "root:root", "0644", render.instance_master_cf(instance))
    for path, content in render.instance_tables(instance).items():
        body += _put(path, "root:root", "0644", content)
    body += f"""validate "postfix -c {directory} check" postfix -c {directory} check
keep_changes
action=none
if any_changed; then action=reload; fi
# Listening sockets are bound at start: a new address needs a restart.
if [ "$old_interfaces" != "$(postconf -c {directory} -h inet_interfaces)" ]; then action=restart; fi
ensure_service postfix@{name} "$action"
"""
    return _script(f"Postfix instance {name}", body)


def instance_delete(instance: Instance, drain_seconds: int = 30) -> str:
    """Retire an instance without losing mail: refuse while its queue still holds messages."""
    name, directory = instance.name, render.instance_dir(instance)
    return _script(f"retire Postfix instance {name}", f"""lock_default_main_cf
if ! instance_exists {name}; then
  echo "instance {name} is already gone"
  exit 0
fi
queue=$(postconf -c {directory} -h queue_directory)
queued() {{ find "$queue"/maildrop "$queue"/incoming "$queue"/active "$queue"/deferred "$queue"/hold -type f 2>/dev/null | wc -l; }}
postqueue -c {directory} -f 2>/dev/null || true
for _ in $(seq {drain_seconds}); do [ "$(queued)" -eq 0 ] && break; sleep 1; done
systemctl stop postfix@{name}
count=$(queued)
if [ "$count" -gt 0 ]; then
  systemctl start postfix@{name}
  fail "instance {name} still holds $count message(s) in $queue, so it is left running: let the queue drain (postqueue -c {directory} -p) and run pulumi up again"
fi
systemctl disable -q postfix@{name} 2>/dev/null || true
postmulti -i {name} -e disable
# destroy removes only main.cf and master.cf, then the directory if it is empty.
rm -f {" ".join(_q(path) for path in render.instance_tables(instance))}
postmulti -i {name} -e destroy
echo "destroyed instance {name}"
""")
