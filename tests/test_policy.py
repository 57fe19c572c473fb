"""The policy pack in policy/: each rule fires on a bad input and stays quiet on a good one, the
stack-file check, and the pack itself answering the analyzer gRPC calls the Pulumi engine makes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pulumi
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

import harness  # tests/ helpers: conftest puts tests/ and the repo root on sys.path
from shape_mocks import ShapeMocks
from keys import openssh_private_key, rsa_private_key

POLICY_DIR = Path(__file__).resolve().parent.parent / "policy"
sys.path.insert(0, str(POLICY_DIR))
import check_stack_file  # noqa: E402
import mailfleet_policy as rules  # noqa: E402

# Not a real key: the rule looks for the armour, as any leak would show it.
PRIVATE_KEY = rsa_private_key()
OPENSSH_KEY = openssh_private_key()


def resource(resource_type: str, name: str, props: dict, secret_outputs=()) -> ResourceValidationArgs:
    """The args a validator gets, built as the analyzer builds them (props behind the proxy
    that raises on values unknown during preview)."""
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), list(secret_outputs), None)
    return ResourceValidationArgs(resource_type, unknown_checking_proxy(props),
                                  f"urn:pulumi:dev::mailfleet::{resource_type}::{name}", name, opts, None)


def violations(validator, args) -> list[str]:
    found: list[str] = []
    validator(args, lambda message, urn=None: found.append(message))
    return found


# ---- dkim-key-strength ---------------------------------------------------------------------

def tls_key(name, **props):
    return resource("tls:index/privateKey:PrivateKey", name, props)


def test_dkim_key_strength_accepts_rsa_2048_and_more():
    assert violations(rules.dkim_key_strength, tls_key("dkim-example-com-sel1", algorithm="RSA", rsaBits=2048)) == []
    assert violations(rules.dkim_key_strength, tls_key("dkim-example-com-sel1", algorithm="RSA", rsaBits=4096.0)) == []
    # pulumi-tls makes 2048-bit RSA keys when rsaBits is not given.
    assert violations(rules.dkim_key_strength, tls_key("dkim-example-com-sel1", algorithm="RSA")) == []


def test_dkim_key_strength_accepts_ed25519():
    assert violations(rules.dkim_key_strength, tls_key("dkim-e1._domainkey.example.com", algorithm="ED25519")) == []


def test_dkim_key_strength_rejects_short_or_non_rsa_keys():
    [short] = violations(rules.dkim_key_strength, tls_key("mx1-DKIM-sel1", algorithm="RSA", rsaBits=1024))
    assert "rsaBits 1024" in short
    [ecdsa] = violations(rules.dkim_key_strength, tls_key("dkim-sel1", algorithm="ECDSA", ecdsaCurve="P256"))
    assert "'ECDSA'" in ecdsa


def test_dkim_key_strength_leaves_other_keys_alone():
    assert violations(rules.dkim_key_strength, tls_key("fleet-ca-key", algorithm="ECDSA")) == []
    assert violations(rules.dkim_key_strength, tls_key("mx1-ssh-key", algorithm="ED25519")) == []


# ---- instance-source-address and milter-never-accept ---------------------------------------

def instance_main_cf(ip="127.0.0.43", bind="127.0.0.43", milter="tempfail") -> str:
    lines = [
        "# Managed by mailfleet",
        "multi_instance_name = postfix-43",
        "multi_instance_enable = yes",
        "myhostname = s43.mail.example.com",
        f"inet_interfaces = {ip}",
        "smtpd_milters = inet:127.0.0.1:8891",
        "non_smtpd_milters = $smtpd_milters",
        f"milter_default_action = {milter}",
    ]
    if bind is not None:
        lines.insert(5, f"smtp_bind_address = {bind}")
    return "\n".join(lines) + "\n"


def config_script(main_cf: str) -> str:
    """A -config command's stdin: files written through here-documents, then a reload."""
    return (
        "set -eu\n"
        "cat > /etc/postfix-43/main.cf <<'MAINCF'\n" + main_cf + "MAINCF\n"
        "cat > /etc/postfix-43/master.cf <<'MASTERCF'\n"
        "smtp      inet  n       -       y       -       -       smtpd\n"
        "MASTERCF\n"
        "postmulti -i postfix-43 -p reload\n"
    )


def command(name, **props):
    return resource("command:remote:Command", name, props)


def test_instance_source_address_accepts_a_bind_address_equal_to_the_listen_address():
    assert violations(rules.instance_source_address, command("postfix-43-config", stdin=config_script(instance_main_cf()))) == []
    expanded = instance_main_cf(bind="$inet_interfaces")
    assert violations(rules.instance_source_address, command("postfix-43-config", stdin=config_script(expanded))) == []


def test_instance_source_address_rejects_a_missing_bind_address():
    [message] = violations(rules.instance_source_address,
                           command("postfix-43-config", stdin=config_script(instance_main_cf(bind=None))))
    assert "postfix-43" in message and "no smtp_bind_address" in message


def test_instance_source_address_rejects_a_different_bind_address():
    stdin = config_script(instance_main_cf(bind="127.0.0.45"))
    [message] = violations(rules.instance_source_address, command("postfix-43-config", stdin=stdin))
    assert "'127.0.0.45'" in message and "'127.0.0.43'" in message
    # stdin that is the main.cf itself, without a script around it
    [message] = violations(rules.instance_source_address,
                           command("postfix-43-config", stdin=instance_main_cf(bind="127.0.0.45")))
    assert "differs" in message


def test_instance_source_address_only_reads_instance_main_cf_of_config_commands():
    bad = config_script(instance_main_cf(bind=None))
    assert violations(rules.instance_source_address, command("postfix-43-install", stdin=bad)) == []
    default_instance = config_script("inet_interfaces = 127.0.0.1\nmulti_instance_enable = yes\n")
    assert violations(rules.instance_source_address, command("mx1-config", stdin=default_instance)) == []


def test_parse_main_cf_reads_continuations_and_lets_the_last_assignment_win():
    settings = rules.parse_main_cf("a = 1\n# a = 3\nmynetworks = 127.0.0.0/8,\n    10.0.0.0/16\na = 2\n")
    assert settings == {"a": "2", "mynetworks": "127.0.0.0/8, 10.0.0.0/16"}


def test_milter_never_accept_rejects_accept_in_main_cf_or_postconf():
    stdin = config_script(instance_main_cf(milter="accept"))
    [message] = violations(rules.milter_never_accept, command("postfix-43-config", stdin=stdin))
    assert "stdin" in message and "tempfail" in message
    assert violations(rules.milter_never_accept,
                      command("postfix-43-tweak", create="postconf -e milter_default_action=accept")) != []


def test_milter_never_accept_accepts_tempfail_and_unset():
    stdin = config_script(instance_main_cf(milter="tempfail"))
    assert violations(rules.milter_never_accept, command("postfix-43-config", stdin=stdin)) == []
    assert violations(rules.milter_never_accept, command("mx1-install", create="apt-get install -y postfix")) == []


# ---- relay-networks-not-open ---------------------------------------------------------------

def with_mynetworks(value: str) -> str:
    return config_script(instance_main_cf() + f"mynetworks = {value}\n")


@pytest.mark.parametrize("mynetworks", ["127.0.0.0/8", "127.0.0.0/8, 10.0.0.0/8, 192.0.2.0/24",
                                        "127.0.0.0/8 [::1]/128 [2001:db8::]/32"])
def test_relay_networks_not_open_accepts_networks_up_to_a_slash_8(mynetworks):
    assert violations(rules.relay_networks_not_open, command("postfix-43-config", stdin=with_mynetworks(mynetworks))) == []


@pytest.mark.parametrize("mynetworks,entry", [("127.0.0.0/8, 0.0.0.0/0", "0.0.0.0/0"),
                                              ("127.0.0.0/8,10.0.0.0/7", "10.0.0.0/7"),
                                              ("127.0.0.0/8\n    128.0.0.0/1", "128.0.0.0/1"),
                                              ("[::]/0", "[::]/0")])
def test_relay_networks_not_open_rejects_wider_networks(mynetworks, entry):
    [message] = violations(rules.relay_networks_not_open, command("postfix-43-config", stdin=with_mynetworks(mynetworks)))
    assert message.startswith(f"postfix-43: mynetworks holds {entry}, wider than /8")


def test_relay_networks_not_open_wants_mynetworks_set():
    [message] = violations(rules.relay_networks_not_open, command("postfix-43-config", stdin=config_script(instance_main_cf())))
    assert "sets no mynetworks" in message


# ---- no-plain-private-keys -----------------------------------------------------------------

def test_no_plain_private_keys_rejects_a_key_in_an_input_that_is_not_secret():
    [message] = violations(rules.no_plain_private_keys,
                           command("mx1-dkim-keys", create="install-keys", stdin=f"cat > k <<'EOF'\n{PRIVATE_KEY}EOF\n"))
    assert "'stdin'" in message and "additional_secret_outputs" in message
    nested = command("mx1-config", connection={"host": "127.0.0.1", "privateKey": OPENSSH_KEY})
    assert len(violations(rules.no_plain_private_keys, nested)) == 1


def test_no_plain_private_keys_accepts_keys_in_secret_inputs():
    args = resource("command:remote:Command", "mx1-dkim-keys",
                    {"stdin": PRIVATE_KEY, "connection": {"privateKey": OPENSSH_KEY}},
                    secret_outputs=["stdin", "connection"])
    assert violations(rules.no_plain_private_keys, args) == []
    public_only = resource("vsphere:index/virtualMachine:VirtualMachine", "mx1",
                           {"extraConfig": {"guestinfo.userdata": "ssh-ed25519 AAAAC3Nza mailfleet"}})
    assert violations(rules.no_plain_private_keys, public_only) == []


def test_no_plain_private_keys_reads_string_assets_and_skips_unknown_values():
    copy = resource("command:remote:CopyToRemote", "mx1-tls",
                    {"source": pulumi.StringAsset(PRIVATE_KEY), "remotePath": UNKNOWN_STRING_VALUE})
    assert len(violations(rules.no_plain_private_keys, copy)) == 1


# ---- the stack file ------------------------------------------------------------------------

def test_stack_file_with_secure_values_passes():
    stack_file = {"config": {
        "mailfleet:sshPrivateKey": {"secure": "v1:abc"},
        "mailfleet:tls": {"mode": "provided", "certPem": "-----BEGIN CERTIFICATE-----", "keyPem": {"secure": "v1:def"}},
        "vsphere:password": {"secure": "v1:ghi"},
        "vsphere:user": "administrator@vsphere.local",
        "mailfleet:deliveryWebhook": {"url": "https://hooks.example.com/", "secret": {"secure": "v1:jkl"}},
    }}
    assert check_stack_file.plaintext_secrets(stack_file) == []
    assert check_stack_file.plaintext_secrets({"config": {"mailfleet:tls": {"secure": "v1:all-of-it"}}}) == []


def test_stack_file_with_plaintext_keys_fails_naming_each():
    stack_file = {"config": {
        "mailfleet:sshPrivateKey": OPENSSH_KEY,
        "mailfleet:tls": {"mode": "provided", "keyPem": PRIVATE_KEY},
        "vsphere:password": "hunter2",
        "mailfleet:somethingElse": [{"note": PRIVATE_KEY}],
        "mailfleet:deliveryWebhook": {"url": "https://hooks.example.com/", "secret": "0123456789abcdef-plain"},
    }}
    problems = check_stack_file.plaintext_secrets(stack_file)
    assert [problem.split(" ")[0] for problem in problems] == [
        "mailfleet:sshPrivateKey", "mailfleet:tls.keyPem", "vsphere:password", "mailfleet:somethingElse[0].note",
        "mailfleet:deliveryWebhook.secret"]


def test_stack_file_check_exit_status(tmp_path, capsys):
    good = tmp_path / "Pulumi.dev.yaml"
    good.write_text("config:\n  mailfleet:sshPrivateKey:\n    secure: v1:abc\n")
    bad = tmp_path / "Pulumi.prod.yaml"
    bad.write_text("config:\n  mailfleet:sshPrivateKey: |\n" + textwrap.indent(OPENSSH_KEY, "    "))
    assert check_stack_file.main([str(good)]) == 0
    assert check_stack_file.main([str(good), str(bad)]) == 1
    assert "Pulumi.prod.yaml: mailfleet:sshPrivateKey is in plaintext" in capsys.readouterr().out
    capsys.readouterr()
    assert check_stack_file.main([str(tmp_path / "Pulumi.absent.yaml")]) == 1
    assert f"{tmp_path / 'Pulumi.absent.yaml'}: no such file, so nothing was checked" in capsys.readouterr().out
    assert check_stack_file.main([str(good), str(tmp_path / "Pulumi.absent.yaml")]) == 1
    assert check_stack_file.main([]) == 2


def test_stack_file_check_as_a_command_fails_on_a_missing_file(tmp_path):
    result = subprocess.run([sys.executable, str(POLICY_DIR / "check_stack_file.py"), str(tmp_path / "Pulumi.typo.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "no such file" in result.stdout


# ---- the pack as the engine runs it --------------------------------------------------------

SECRET_SIG = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}


@pytest.fixture(scope="module")
def analyzer():
    """The pack started the way the Pulumi CLI starts it: it prints its gRPC port."""
    pack = subprocess.Popen([sys.executable, "-u", str(POLICY_DIR / "__main__.py")],
                            cwd=POLICY_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(pack.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        pack.terminate()
        pack.wait(timeout=10)


def analyze(stub, resource_type, name, props, secret_outputs=()):
    properties = struct_pb2.Struct()
    properties.update(props)
    request = analyzer_pb2.AnalyzeRequest(
        type=resource_type, name=name, urn=f"urn:pulumi:dev::mailfleet::{resource_type}::{name}",
        properties=properties,
        options=analyzer_pb2.AnalyzerResourceOptions(additionalSecretOutputs=list(secret_outputs)))
    return [(d.policyName, d.enforcementLevel) for d in stub.Analyze(request, timeout=10).diagnostics]


def test_pack_lists_its_rules_as_mandatory(analyzer):
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=10)
    assert info.name == "mailfleet"
    assert {policy.name: policy.enforcementLevel for policy in info.policies} == {
        name: analyzer_pb2.MANDATORY for name in rules.VALIDATORS}


def test_pack_blocks_a_weak_dkim_key(analyzer):
    assert analyze(analyzer, "tls:index/privateKey:PrivateKey", "dkim-example-com-sel1",
                   {"algorithm": "RSA", "rsaBits": 1024}) == [("dkim-key-strength", analyzer_pb2.MANDATORY)]


def test_pack_cannot_see_that_an_input_is_secret(analyzer):
    # The engine sends a secret input wrapped like this; the validator still gets the plain value,
    # which is why the rule asks for additionalSecretOutputs instead.
    secret_stdin = {**SECRET_SIG, "value": PRIVATE_KEY}
    assert analyze(analyzer, "command:remote:Command", "mx1-keys", {"stdin": secret_stdin}) == [
        ("no-plain-private-keys", analyzer_pb2.MANDATORY)]
    assert analyze(analyzer, "command:remote:Command", "mx1-keys", {"stdin": secret_stdin},
                   secret_outputs=["stdin"]) == []


# ---- the program itself, under mocks, against the pack ---------------------------------------

REPO = POLICY_DIR.parent


class _MonitorWithSecretOutputs(harness.RecordingMonitor):
    """Also keeps each resource's additionalSecretOutputs, which the pack sees as opts."""

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if response.urn in self.registrations:
            self.registrations[response.urn].additional_secret_outputs = list(request.additionalSecretOutputs)
        return response


@pytest.fixture(scope="module", params=["dev", "prod"])
def program_resources(request):
    stack = request.param
    config, secret_keys = harness.stack_config(REPO / f"Pulumi.{stack}.yaml",
                                               {"mailfleet:sshPrivateKey": OPENSSH_KEY})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness, "RecordingMonitor", _MonitorWithSecretOutputs)
        run = harness.run_program(config, ShapeMocks(), secret_keys=secret_keys, stack=stack)
    return [resource(r.type, r.name, r.inputs, getattr(r, "additional_secret_outputs", []))
            for r in run.monitor.registrations.values() if ":" in r.type and not r.type.startswith("mailfleet:")]


@pytest.mark.parametrize("rule", ["dkim-key-strength", "instance-source-address", "milter-never-accept",
                                  "relay-networks-not-open"])
def test_the_program_passes_the_mail_rules(program_resources, rule):
    assert any(args.name.endswith("-config") for args in program_resources)
    found = {args.name: violations(rules.VALIDATORS[rule], args) for args in program_resources}
    assert {name: messages for name, messages in found.items() if messages} == {}


def test_the_program_passes_no_plain_private_keys(program_resources):
    found = {args.name: violations(rules.no_plain_private_keys, args) for args in program_resources}
    assert {name: messages for name, messages in found.items() if messages} == {}


def test_the_example_stack_files_hold_no_plaintext_secrets():
    assert check_stack_file.main([str(REPO / "Pulumi.dev.yaml"), str(REPO / "Pulumi.prod.yaml")]) == 0


def test_the_pack_sees_a_wide_relay_network_the_program_would_install(monkeypatch):
    """Around the config validation (as a program or template change could), the rule still finds
    the network in what the program registers."""
    from mailfleet import render

    config, secret_keys = harness.stack_config(REPO / "Pulumi.dev.yaml", {"mailfleet:sshPrivateKey": OPENSSH_KEY})
    monkeypatch.setattr(render, "mynetworks", lambda fleet: ["127.0.0.0/8", *fleet.relay_networks, "0.0.0.0/0"])
    run = harness.run_program(config, ShapeMocks(), secret_keys=secret_keys, stack="dev")
    found = {r.name: violations(rules.relay_networks_not_open, resource(r.type, r.name, r.inputs))
             for r in run.monitor.registrations.values() if r.type == "command:remote:Command"}
    assert {name: len(messages) for name, messages in found.items() if messages} == {
        "postfix-dev1-config": 1, "postfix-dev2-config": 1}


def test_pack_blocks_a_wide_relay_network(analyzer):
    assert analyze(analyzer, "command:remote:Command", "postfix-43-config",
                   {"stdin": with_mynetworks("0.0.0.0/0")}) == [("relay-networks-not-open", analyzer_pb2.MANDATORY)]
