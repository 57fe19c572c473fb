"""Every file mailfleet renders for a stack, by the path it is installed to (tests only)."""

from __future__ import annotations

from mailfleet import render, shaping, signing, tenants
from mailfleet.config import Fleet

VM_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoldenGoldenGoldenGoldenGoldenGoldenGolden mailfleet"


def rendered_files(fleet: Fleet) -> dict[str, str]:
    files = dict(signing.files(fleet.dkim, render.mynetworks(fleet), bool(fleet.tenants)))
    if shaping.enabled(fleet):  # the map's program is mailfleet/shaping_map.py as is: no golden copy of it
        files.update({path: content for path, content in render.shaping_map_files(fleet).items()
                      if path != render.SHAPING_MAP_PROGRAM})
    # The webhook's program is mailfleet/webhook.py as is: no golden copy of it.
    files.update({path: content for path, content in render.webhook_files(fleet).items()
                  if path != render.WEBHOOK_PROGRAM})
    for host in fleet.hosts:
        prefix = f"{host.name}/" if len(fleet.hosts) > 1 else ""
        files[f"{prefix}etc/postfix/main.cf"] = render.default_main_cf(fleet, host)
        for instance in host.instances:
            files[f"{render.instance_dir(instance)}/main.cf"] = render.instance_main_cf(fleet, instance)
            files[f"{render.instance_dir(instance)}/master.cf"] = render.instance_master_cf(fleet, instance)
            files.update(render.instance_tables(fleet, instance))
        if not host.existing:
            files[f"guestinfo/{host.name}/metadata.yaml"] = render.cloud_init_metadata(host)
            files[f"guestinfo/{host.name}/userdata.yaml"] = render.cloud_init_userdata(
                host, [VM_KEY, *fleet.ssh_authorized_keys])
    if fleet.tenants:
        for version in render.DOVECOT_VERSIONS:
            files[f"dovecot-{version}{render.DOVECOT_CONF}"] = render.dovecot_conf(version)
        files[render.TENANT_SENDER_MAP] = render.tenant_sender_map(tenants.sender_owners(fleet))
        for host in fleet.hosts:
            for instance in host.instances:
                files[render.passwd_file_path(instance)] = tenants.passwd_file(
                    {t.name: tenants.password_hash(t) for t in tenants.allowed(fleet, instance)})
    return {path.lstrip("/"): content for path, content in files.items()}
