"""The whole program under Pulumi's mocks: resources, parents, ordering, secrets and outputs."""

import base64
import json
import logging

import pytest
import yaml

import harness
import test_config
from harness import REPO, run_program, stack_config
from mailfleet import dns_records, remote_scripts
from shape_mocks import ShapeMocks
from certs import self_signed
from keys import openssh_private_key

SSH_KEY = openssh_private_key()
COMMAND = "command:remote:Command"


def run_stack(stack: str, **overrides):
    config, secret_keys = stack_config(REPO / f"Pulumi.{stack}.yaml", {"mailfleet:sshPrivateKey": SSH_KEY})
    config.update(overrides)
    return run_program(config, ShapeMocks(), secret_keys=secret_keys, stack=stack)


@pytest.fixture(scope="module")
def prod():
    return run_stack("prod")


@pytest.fixture(scope="module")
def dev():
    return run_stack("dev")


def short(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def deps(run, name: str) -> set[str]:
    return {short(urn) for urn in run.monitor.named(name).dependencies}


def parent(run, name: str) -> str:
    return short(run.monitor.named(name).parent)


def test_prod_builds_a_vm_and_the_steps_in_order(prod):
    assert parent(prod, "victorpostfix-preflight") == "victorpostfix"
    vm = [r for r in prod.monitor.of_type("vsphere:index/virtualMachine:VirtualMachine")]
    assert len(vm) == 1 and short(vm[0].parent) == "victorpostfix"
    assert vm[0].inputs["numCpus"] == 2 and vm[0].inputs["memory"] == 4096
    assert vm[0].inputs["clone"] == {"templateUuid": "4217a9c6-template-uuid"}
    assert "victorpostfix" in deps(prod, "victorpostfix-network")  # waits for the VM
    assert "victorpostfix-network" in deps(prod, "victorpostfix-preflight")
    assert vm[0].inputs["extraConfigRebootRequired"] is False  # the network step applies address changes
    assert "victorpostfix-preflight" in deps(prod, "victorpostfix-packages")
    assert "victorpostfix-packages" in deps(prod, "victorpostfix-postfix-default")
    assert "victorpostfix-packages" in deps(prod, "victorpostfix-opendkim-keys")
    assert "victorpostfix-opendkim-keys" in deps(prod, "victorpostfix-opendkim-config")
    # Nothing is uploaded: the steps carry their scripts, OpenDKIM comes from Debian.
    assert not prod.monitor.of_type("command:remote:CopyToRemote")
    # mailfleet-signer goes once no instance names it any more.
    assert {"postfix-43-config", "postfix-45-config"} <= deps(prod, "victorpostfix-retire-mailfleet-signer")
    for name in ("postfix-43", "postfix-45"):
        assert parent(prod, f"{name}-tls") == parent(prod, f"{name}-config") == name
        assert {"victorpostfix-postfix-default", "victorpostfix-opendkim-config"} <= deps(prod, f"{name}-tls")
        assert f"{name}-tls" in deps(prod, f"{name}-config")


def test_vm_connection_uses_the_generated_key_and_first_ip(prod):
    preflight = prod.monitor.named("victorpostfix-preflight")
    connection = preflight.inputs["connection"]
    assert (connection["host"], connection["user"]) == ("10.1.11.43", "mailfleet")
    generated = prod.monitor.named("vm-ssh-key").outputs["privateKeyOpenssh"]
    assert connection["privateKey"] == generated
    assert "connection" in preflight.secret_inputs


def test_vm_guestinfo_carries_every_ip_and_the_generated_key(prod):
    (vm,) = prod.monitor.of_type("vsphere:index/virtualMachine:VirtualMachine")
    extra = vm.inputs["extraConfig"]
    assert extra["guestinfo.metadata.encoding"] == extra["guestinfo.userdata.encoding"] == "base64"
    metadata = yaml.safe_load(base64.b64decode(extra["guestinfo.metadata"]))
    assert metadata["network"]["ethernets"]["ens160"]["addresses"] == ["10.1.11.43/24", "10.1.11.45/24"]
    userdata = yaml.safe_load(base64.b64decode(extra["guestinfo.userdata"]))
    public_key = prod.monitor.named("vm-ssh-key").outputs["publicKeyOpenssh"].strip()
    assert userdata["users"][0]["ssh_authorized_keys"] == [public_key]


def test_dev_connects_to_the_existing_host_with_the_configured_key(dev):
    assert not dev.monitor.of_type("vsphere:index/virtualMachine:VirtualMachine")
    assert not [r for r in dev.monitor.registrations.values() if r.name == "vm-ssh-key"]
    connection = dev.monitor.named("devpostfix-preflight").inputs["connection"]
    assert (connection["host"], connection["user"], connection["port"]) == ("10.20.0.40", "root", 22)
    assert connection["privateKey"] == SSH_KEY
    assert "10.20.0.41 10.20.0.42" in dev.monitor.named("devpostfix-preflight").inputs["stdin"]


def key_fragments(run) -> dict[str, str]:
    """A line of base64 from the private end of every private key the run holds (the start of an RSA
    key repeats the public modulus, which DKIM records rightly carry), by where it came from."""
    keys = {"sshPrivateKey": SSH_KEY}
    for resource in run.monitor.of_type("tls:index/privateKey:PrivateKey"):
        for field in ("privateKeyPem", "privateKeyOpenssh"):
            keys[f"{resource.name}.{field}"] = resource.outputs[field]
    bodies = {where: pem.strip().splitlines()[1:-1] for where, pem in keys.items()}
    return {where: body[-2] if len(body) > 2 else body[0] for where, body in bodies.items()}


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_key_material_travels_only_as_a_secret(stack, prod, dev):
    """What the program controls (pulumi-command keeps `connection` secret by itself): the steps
    that carry keys send them as secret stdin, kept secret in the state too; scripts, other inputs
    and every output hold no key."""
    run = {"prod": prod, "dev": dev}[stack]
    fragments = key_fragments(run)

    def leaks(value) -> list[str]:
        text = json.dumps(value, default=str)
        return [where for where, fragment in fragments.items() if fragment in text]

    for resource in run.monitor.registrations.values():
        plain = {k: v for k, v in resource.inputs.items() if k not in resource.secret_inputs}
        if resource.type.startswith("tls:"):  # the tls provider's own key inputs, secret in its SDK
            plain = {k: v for k, v in plain.items() if "PrivateKey" not in k}
        assert leaks(plain) == [], f"{resource.name} carries a key in a plain input"
    for urn, outputs in run.monitor.component_outputs.items():
        assert leaks(outputs) == [], f"{urn} exports a key"
    assert leaks(run.outputs) == []

    commands = run.monitor.of_type(COMMAND)
    for command in commands:
        assert leaks([command.inputs["create"], command.inputs.get("delete")]) == [], command.name
    secret_steps = {c.name for c in commands if "stdin" in c.secret_inputs}
    instances = [n for n in run.outputs["instances"]]
    host = next(iter(run.outputs["instances"].values()))["host"]
    tenants = {f"{host}-tenants"} if stack == "dev" else set()  # the dev stack has tenants
    assert secret_steps == {f"{host}-opendkim-keys", *(f"{i}-tls" for i in instances), *tenants}
    for command in commands:
        # The copy of stdin the provider echoes back is secret in the state too; other steps'
        # scripts stay readable in a preview.
        assert ("stdin" in command.additional_secret_outputs) == (command.name in secret_steps), command.name
    dkim_keys = run.monitor.named(f"{host}-opendkim-keys").inputs["stdin"]
    for resource in run.monitor.of_type("tls:index/privateKey:PrivateKey"):
        if resource.name.startswith("dkim-"):
            assert resource.outputs["privateKeyPem"] in dkim_keys, resource.name
    for name in instances:
        tls_key = run.monitor.named(f"tls-{name}-key").outputs["privateKeyPem"]
        assert tls_key in run.monitor.named(f"{name}-tls").inputs["stdin"], name


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_each_host_has_a_drift_check_over_every_step_on_it(stack, prod, dev):
    """ManagedFiles: one per host, after every step on it, watching them in the order they run,
    with their scripts (secret exactly where the step's is) to run again, the connection secret."""
    run = {"prod": prod, "dev": dev}[stack]
    commands = {c.name: c for c in run.monitor.of_type(COMMAND)}
    (check,) = run.monitor.of_type("pulumi-python:dynamic/mailfleet:ManagedFiles")
    host = next(iter(run.outputs["instances"].values()))["host"]
    assert check.name == f"{host}-managed-files" and parent(run, check.name) == host
    names = check.inputs["stepNames"]
    assert set(names) == set(commands) and deps(run, check.name) >= set(commands)
    for i, name in enumerate(names):  # an order they can run in: each after the steps it depends on
        assert deps(run, name) & set(commands) <= set(names[:i]), name
    for i, name in enumerate(names):
        assert remote_scripts.with_library(check.inputs["steps"][i]) == commands[name].inputs["stdin"], name
        assert remote_scripts.LIBRARY not in check.inputs["steps"][i], name
        assert (f"steps[{i}]" in check.secret_paths) == ("stdin" in commands[name].secret_inputs), name
    assert "connection" in check.secret_paths
    assert check.additional_secret_outputs == ["connection", "steps"]
    # A step's delete names the step too, so that it forgets the files it recorded.
    for name, command in commands.items():
        if command.inputs.get("delete"):
            assert f"mailfleet_step={name}\n" in command.inputs["delete"], name


def test_removing_an_instance_runs_a_delete_that_destroys_it(dev):
    config = dev.monitor.named("postfix-dev1-config").inputs
    assert "postmulti -i postfix-dev1 -e destroy" in config["delete"]
    assert "still holds" in config["delete"]  # refuses while mail is queued
    assert "rm -f /etc/mailfleet/tls/postfix-dev1.pem" in dev.monitor.named("postfix-dev1-tls").inputs["delete"]


def test_components_register_their_outputs(prod):
    components = [r for r in prod.monitor.registrations.values() if r.type.startswith("mailfleet:index:")]
    assert {r.type.split(":")[-1] for r in components} == {
        "MailHost", "VsphereVm", "DkimSigner", "PostfixInstance", "DkimKeys", "TlsCertificates"}
    for component in components:
        assert component.urn in prod.monitor.component_outputs, component.name
    host_outputs = prod.monitor.component_outputs[prod.monitor.named("victorpostfix", "mailfleet:index:MailHost").urn]
    assert host_outputs["instances"] == ["postfix-43", "postfix-45"]


def test_outputs_follow_the_interface(prod):
    assert set(prod.outputs) == {"dnsRecords", "dkimRecords", "zoneFile", "instances", "tlsCaCertPem",
                                 "prometheusScrapeConfigs"}
    dkim_key = prod.monitor.named("dkim-selector1-tt5._domainkey.tt5.ecrm.com.tw")
    assert dkim_key.inputs["rsaBits"] == 2048
    assert prod.outputs["dkimRecords"] == {
        "selector1-tt5._domainkey.tt5.ecrm.com.tw": dns_records.dkim_value(dkim_key.outputs["publicKeyPem"])}
    assert prod.outputs["instances"] == {
        "postfix-43": {"host": "victorpostfix", "ip": "10.1.11.43", "hostname": "s43.11.ecrm.com.tw",
                       "publicIp": "203.0.113.43"},
        "postfix-45": {"host": "victorpostfix", "ip": "10.1.11.45", "hostname": "s45.11.ecrm.com.tw",
                       "publicIp": "203.0.113.45"}}
    records = prod.outputs["dnsRecords"]
    assert all(set(r) == {"name", "type", "value", "ttl", "purpose"} for r in records)
    assert {"203.0.113.43", "s43.11.ecrm.com.tw"} <= {r["value"] for r in records}
    assert len(prod.outputs["zoneFile"].splitlines()) == len(records) + 1
    assert prod.outputs["tlsCaCertPem"] == prod.monitor.named("tls-ca").outputs["certPem"]
    assert prod.monitor.named("tls-ca").inputs["isCaCertificate"] is True
    cert = prod.monitor.named("tls-postfix-45-csr").inputs
    assert cert["dnsNames"] == ["s45.11.ecrm.com.tw"]


def test_provided_tls_serves_the_users_certificate_to_every_instance():
    cert, key = self_signed("*.dev.ecrm.com.tw")
    run = run_stack("dev", **{"mailfleet:tls": json.dumps({"mode": "provided", "certPem": cert, "keyPem": key})})
    assert run.outputs["tlsCaCertPem"] is None
    assert not run.monitor.of_type("tls:index/selfSignedCert:SelfSignedCert")
    for name in ("postfix-dev1", "postfix-dev2"):
        stdin = run.monitor.named(f"{name}-tls").inputs["stdin"]
        assert key + cert in stdin


def test_bad_config_stops_before_any_resource():
    with pytest.raises(Exception) as error:
        run_stack("dev", **{"mailfleet:relayNetworks": '["10.0.0.0/33"]'})
    assert "mailfleet:relayNetworks[0]: '10.0.0.0/33' is not an IPv4 CIDR" in str(error.value)


class _KeptMonitor(harness.RecordingMonitor):
    """Remembers the last monitor made, so a test can read it after the program raised."""
    last = None

    def __init__(self, mocks):
        super().__init__(mocks)
        _KeptMonitor.last = self


def run_raw(config: dict[str, str], monkeypatch):
    monkeypatch.setattr(harness, "RecordingMonitor", _KeptMonitor)
    _KeptMonitor.last = None
    return run_program(config, ShapeMocks(), stack="dev")


def test_the_table_config_registers_resources(monkeypatch):
    run = run_raw(test_config.raw(test_config.GOOD), monkeypatch)
    assert len(_KeptMonitor.last.registrations) > 10 and run.outputs["instances"]


@pytest.mark.parametrize("path,value,message", test_config.BAD_INPUTS,
                         ids=[f"{p}={v!r}"[:60] for p, v, _ in test_config.BAD_INPUTS])
def test_every_bad_config_registers_nothing(path, value, message, monkeypatch):
    with pytest.raises(Exception) as error:
        run_raw(test_config.raw(test_config.changed(path, value)), monkeypatch)
    assert message in str(error.value)
    assert _KeptMonitor.last is not None and _KeptMonitor.last.registrations == {}


def test_warnings_name_each_private_instance_without_public_ip(caplog):
    hosts = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]["mailfleet:hosts"]
    hosts[0]["instances"][0]["publicIp"] = "198.51.100.41"
    del hosts[0]["instances"][1]["publicIp"]
    with caplog.at_level(logging.WARNING):
        run = run_stack("dev", **{"mailfleet:hosts": json.dumps(hosts)})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "publicIp" in w] == [
        "mailfleet:hosts[0].instances[1]: instance postfix-dev2 sends from a private address 10.20.0.42 and has "
        "no publicIp: receivers see the NAT's public address, so the A, PTR and SPF records published for it "
        "will not match; set publicIp to that address"]
    assert run.outputs["instances"] == {
        "postfix-dev1": {"host": "devpostfix", "ip": "10.20.0.41", "hostname": "d41.dev.ecrm.com.tw",
                         "publicIp": "198.51.100.41"},
        "postfix-dev2": {"host": "devpostfix", "ip": "10.20.0.42", "hostname": "d42.dev.ecrm.com.tw"}}
    records = {(r["name"], r["type"]): r["value"] for r in run.outputs["dnsRecords"]}
    assert records[("d41.dev.ecrm.com.tw", "A")] == "198.51.100.41"
    assert records[("41.100.51.198.in-addr.arpa", "PTR")] == "d41.dev.ecrm.com.tw"
    assert records[("dev.ecrm.com.tw", "TXT")] == "v=spf1 ip4:198.51.100.41 ip4:10.20.0.42 -all"
    # The instance still binds and sends from its own address.
    stdin = run.monitor.named("postfix-dev1-config").inputs["stdin"]
    assert "inet_interfaces = 10.20.0.41" in stdin and "198.51.100.41" not in stdin


def test_every_dkim_record_in_every_output_comes_from_its_own_key():
    import dns.name
    import dns.rdatatype
    import dns.zone

    dkim = [{"domain": "dev.ecrm.com.tw", "selector": "dev1"}, {"domain": "dev.ecrm.com.tw", "selector": "dev2"},
            {"domain": "ecrm.com.tw", "selector": "main"}]
    run = run_stack("dev", **{"mailfleet:dkim": json.dumps(dkim)})
    expected = {}
    for entry in dkim:
        name = f"{entry['selector']}._domainkey.{entry['domain']}"
        expected[name] = dns_records.dkim_value(run.monitor.named(f"dkim-{name}").outputs["publicKeyPem"])
    assert len(set(expected.values())) == 3  # the mocks make a real, different key for each
    assert run.outputs["dkimRecords"] == expected
    in_records = {r["name"]: r["value"] for r in run.outputs["dnsRecords"] if "._domainkey." in r["name"]}
    assert in_records == expected
    zone = dns.zone.from_text(run.outputs["zoneFile"], origin=dns.name.root, relativize=False, check_origin=False)
    for name, value in expected.items():
        (rdata,) = zone.find_rdataset(name + ".", dns.rdatatype.TXT)
        assert b"".join(rdata.strings).decode() == value, name


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_example_stacks_run_without_a_warning(caplog, stack):
    with caplog.at_level(logging.WARNING):
        run_stack(stack)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_documentation_shows_the_example_stack_files_as_they_are(stack):
    text = (REPO / f"Pulumi.{stack}.yaml").read_text()
    documents = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert any(f"```yaml\n{text}```" in document.read_text() for document in documents)


WEBHOOK_SECRET = "program-signing-secret-0123456789"


def test_the_webhook_step_is_secret_exactly_when_it_carries_the_signing_secret(dev):
    config, secret_keys = stack_config(REPO / "Pulumi.dev.yaml", {"mailfleet:sshPrivateKey": SSH_KEY})
    config["mailfleet:deliveryWebhook"] = json.dumps({"url": "https://hooks.example.com/m", "secret": WEBHOOK_SECRET})
    run = run_program(config, ShapeMocks(), secret_keys=[*secret_keys, "mailfleet:deliveryWebhook"], stack="dev")
    step = run.monitor.named("devpostfix-webhook")
    assert "stdin" in step.secret_inputs and "stdin" in step.additional_secret_outputs
    assert WEBHOOK_SECRET in step.inputs["stdin"] and "devpostfix-deliveries" in deps(run, "devpostfix-webhook")
    for resource in run.monitor.registrations.values():
        plain = {k: v for k, v in resource.inputs.items() if k not in resource.secret_inputs}
        assert WEBHOOK_SECRET not in json.dumps(plain, default=str), resource.name
    # Without deliveryWebhook the step is there to remove the service (and is not secret).
    absent = dev.monitor.named("devpostfix-webhook")
    assert "stdin" not in absent.secret_inputs and "systemctl disable -q --now mailfleet-webhook" in absent.inputs["stdin"]
