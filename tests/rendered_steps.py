"""Every remote step's script for a stack, by step name (tests only)."""

from __future__ import annotations

from mailfleet import metrics, remote_scripts, render, signing
from mailfleet.config import DeliveryWebhook, Fleet, Warmup

# A placeholder in PEM framing, not a key: these tests read scripts, they never run them.
FAKE_PEM = "-----BEGIN {0}-----\nAAAA\n-----END {0}-----\n".format("PRIVATE KEY")


def rendered_steps(fleet: Fleet) -> dict[str, str]:
    steps = {"packages": remote_scripts.packages(),
             "dkim-keys": signing.keys_step({key: FAKE_PEM for key in fleet.dkim}),
             "dkim-keys-delete": signing.keys_delete_step(),
             "dkim-config": signing.config_step(fleet.dkim, render.mynetworks(fleet)),
             "migrate-signer": signing.migrate_signer_step(fleet.hosts[0].ssh_user or "root"),
             "tenants-delete": remote_scripts.tenant_credentials_delete(),
             "shaping-map": remote_scripts.shaping_map(fleet),
             "shaping-map-delete": remote_scripts.shaping_map_delete(),
             "warmup-delete": remote_scripts.warmup_delete(),
             "deliveries-delete": remote_scripts.deliveries_delete(),
             "webhook": remote_scripts.webhook(fleet),
             "webhook-delete": remote_scripts.webhook_delete(),
             "metrics-delete": metrics.delete_step()}
    # ... and as it is with a webhook, when the stack has none.
    if fleet.delivery_webhook is None:
        hook = DeliveryWebhook(url="https://hooks.example.com/mail", secret="placeholder-secret-0123456789")
        steps["webhook-on"] = remote_scripts.webhook(fleet.model_copy(update={"delivery_webhook": hook}))
    for host in fleet.hosts:
        steps[f"{host.name}-preflight"] = remote_scripts.preflight(host)
        if not host.existing:
            steps[f"{host.name}-network"] = remote_scripts.network(host)
        steps[f"{host.name}-default-instance"] = remote_scripts.default_instance(fleet, host)
        steps[f"{host.name}-tenants"] = remote_scripts.tenant_credentials(fleet, host)
        steps[f"{host.name}-warmup"] = remote_scripts.warmup(fleet, host)
        # ... and as it is when the first instance warms up.
        warming = host.instances[0].model_copy(update={"warmup": Warmup(start="2026-12-07")})
        steps[f"{host.name}-warmup-on"] = remote_scripts.warmup(
            fleet, host.model_copy(update={"instances": (warming, *host.instances[1:])}))
        steps[f"{host.name}-metrics"] = metrics.step(host, fleet.metrics_networks, fleet.dkim)
        steps[f"{host.name}-deliveries"] = remote_scripts.deliveries(fleet, host)
        for instance in host.instances:
            steps[f"{host.name}-{instance.name}-tls"] = remote_scripts.instance_tls(instance, FAKE_PEM)
            steps[f"{host.name}-{instance.name}-tls-delete"] = remote_scripts.instance_tls_delete(instance)
            steps[f"{host.name}-{instance.name}-config"] = remote_scripts.instance_config(fleet, instance)
            steps[f"{host.name}-{instance.name}-delete"] = remote_scripts.instance_delete(instance)
    return steps
