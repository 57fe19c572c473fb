"""Tenants: their config rules, their hashes, and where their passwords may and may not go."""

import copy
import json

import pytest
from argon2 import PasswordHasher

import test_config
from harness import REPO, run_program, stack_config
from mailfleet import remote_scripts, render, tenants
from mailfleet.config import ConfigError, Tenant, parse_config
from rendered_steps import rendered_steps
from shape_mocks import ShapeMocks
from test_config import GOOD, raw

POLICY = REPO / "policy"
PASSWORD = "correct-horse-battery-staple"
OTHER = "another-long-password-4321"
ALICE = {"name": "alice", "password": PASSWORD, "domains": ["example.com"], "instances": ["postfix-43"]}
BOB = {"name": "bob", "password": OTHER, "domains": ["mail.example.com"]}


def with_tenants(*items, secret=True):
    return parse_config(raw({**GOOD, "tenants": list(items)}), ["mailfleet:tenants"] if secret else [])


def problems_of(*items, secret=True) -> list[str]:
    with pytest.raises(ConfigError) as error:
        with_tenants(*items, secret=secret)
    return error.value.problems


def changed(tenant: dict, **fields) -> dict:
    result = copy.deepcopy(tenant)
    for key, value in fields.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


ARGON2 = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$SfHyA2mVNl9rfjS4i1vzMg$c7HcQh9P6iXW7XjkABxT/dBpuUuVhBTceKe3dXaL4ic"

BAD_TENANTS = [
    (changed(ALICE, domains=["example.org"]),
     "mailfleet:tenants[0].domains[0]: example.org is not a signing domain (mailfleet:dkim) or a subdomain of one"),
    (changed(ALICE, domains=["notexample.com"]), "mailfleet:tenants[0].domains[0]: notexample.com is not a signing domain"),
    (changed(ALICE, domains=["example.com", "example.com"]), "mailfleet:tenants[0].domains[1]: duplicate domain 'example.com'"),
    (changed(ALICE, domains=[]), "mailfleet:tenants[0].domains: must list at least one domain"),
    (changed(ALICE, instances=["postfix-99"]), "mailfleet:tenants[0].instances[0]: 'postfix-99' is not an instance of mailfleet:hosts"),
    (changed(ALICE, instances=[]), "mailfleet:tenants[0].instances: must list at least one instance"),
    (changed(ALICE, password=""), "mailfleet:tenants[0].password: is empty; a tenant password needs at least 16 characters"),
    (changed(ALICE, password="short-password"), "mailfleet:tenants[0].password: is 14 characters long; a tenant password needs at least 16"),
    (changed(ALICE, password="abcabcabcabcabcabcabc"), "mailfleet:tenants[0].password: is weak: it has fewer than 6 different characters"),
    (changed(ALICE, password=None), "mailfleet:tenants[0]: needs exactly one of password (a secret) and passwordHash"),
    (changed(ALICE, passwordHash=ARGON2), "mailfleet:tenants[0]: needs exactly one of password (a secret) and passwordHash"),
    (changed(ALICE, password=None, passwordHash="{MD5}abcdef"), "mailfleet:tenants[0].passwordHash: {MD5} is a weak scheme"),
    (changed(ALICE, password=None, passwordHash="{PLAIN}" + PASSWORD), "mailfleet:tenants[0].passwordHash: {PLAIN} is a weak scheme"),
    (changed(ALICE, password=None, passwordHash="{NOSUCH}abc"), "mailfleet:tenants[0].passwordHash: {NOSUCH} is an unknown scheme"),
    (changed(ALICE, password=None, passwordHash="$6$salt$hash"), "mailfleet:tenants[0].passwordHash: is not a Dovecot password hash"),
    (changed(ALICE, password=None, passwordHash="{SHA512-CRYPT}$6$x$tooshort"), "mailfleet:tenants[0].passwordHash: is not a valid {SHA512-CRYPT} hash"),
    (changed(ALICE, name="Alice"), "mailfleet:tenants[0].name: 'Alice' must be 1 to 64 lowercase letters"),
    (changed(ALICE, name="a:b"), "mailfleet:tenants[0].name: 'a:b' must be"),
    (changed(ALICE, mailbox="x"), "mailfleet:tenants[0].mailbox: unknown key"),
]


@pytest.mark.parametrize("tenant,message", BAD_TENANTS, ids=[m.split(": ", 1)[1][:40] for _, m in BAD_TENANTS])
def test_bad_tenants_are_refused_naming_the_key(tenant, message):
    problems = problems_of(tenant)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_duplicate_tenant_names_are_refused_at_the_second():
    assert problems_of(ALICE, changed(BOB, name="alice")) == [
        "mailfleet:tenants[1].name: duplicate tenant name 'alice' (also mailfleet:tenants[0])"]


def test_a_password_that_is_not_a_pulumi_secret_is_refused():
    assert problems_of(ALICE, secret=False) == [
        "mailfleet:tenants[0].password: is not a secret: set it with "
        "`pulumi config set --secret --path 'mailfleet:tenants[0].password'` (or give passwordHash instead)"]
    with_tenants(changed(ALICE, password=None, passwordHash=ARGON2), secret=False)  # a hash may be plain


def test_no_message_echoes_a_password_or_a_hash():
    for tenant in (changed(ALICE, password="short\npassword"), changed(ALICE, password="short-one"),
                   changed(ALICE, password=None, passwordHash=ARGON2 + "!")):
        text = "\n".join(problems_of(tenant))
        assert "short" not in text and "argon2id$" not in text, text


def test_good_tenants_are_typed_with_all_instances_by_default():
    fleet = with_tenants(ALICE, BOB, changed(BOB, name="carol", password=None, passwordHash=ARGON2))
    alice, bob, carol = fleet.tenants
    assert alice.instances == ("postfix-43",) and bob.instances is None
    assert [i.name for _, i in fleet.instances if bob.allowed_on(i)] == ["postfix-43", "postfix-45", "postfix-47"]
    assert [i.name for _, i in fleet.instances if alice.allowed_on(i)] == ["postfix-43"]
    assert carol.password_hash == ARGON2
    assert PASSWORD not in repr(alice) and "argon2id" not in repr(carol)


def test_a_password_hashes_to_a_stable_argon2id_that_verifies():
    alice = Tenant(name="alice", password=PASSWORD, domains=("example.com",))
    hashed = tenants.password_hash(alice)
    assert hashed.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert hashed == tenants.password_hash(alice)  # a re-apply writes the same file
    assert PasswordHasher().verify(hashed.removeprefix("{ARGON2ID}"), PASSWORD)
    # Another name or password: another salt, another hash.
    assert tenants.password_hash(alice.model_copy(update={"name": "bob"})) != hashed
    assert tenants.password_hash(alice.model_copy(update={"password": OTHER})).split("$")[4] != hashed.split("$")[4]
    given = alice.model_copy(update={"password": None, "password_hash": ARGON2})
    assert tenants.password_hash(given) == ARGON2


def test_each_instance_gets_the_tenants_allowed_there_and_the_sender_map_owns_domains():
    fleet = with_tenants(ALICE, BOB, changed(BOB, name="carol", domains=["example.com"], instances=["postfix-47"]))
    script = remote_scripts.tenant_credentials(fleet, fleet.hosts[0])
    files = {i.name: tenants.passwd_file({t.name: "H" for t in tenants.allowed(fleet, i)}) for _, i in fleet.instances}
    assert files == {"postfix-43": "alice:H\nbob:H\n", "postfix-45": "bob:H\n", "postfix-47": "bob:H\ncarol:H\n"}
    assert tenants.sender_owners(fleet) == {"@example.com": ["alice", "carol"], "@mail.example.com": ["bob"]}
    assert "@example.com alice,carol\n@mail.example.com bob\n" in render.tenant_sender_map(tenants.sender_owners(fleet))
    # The host's step writes only its own instances' files.
    assert "/etc/dovecot/mailfleet/postfix-43.passwd" in script and "postfix-47.passwd" not in script


def test_instances_offer_sasl_on_587_and_465_only_with_tenants():
    fleet = with_tenants(ALICE)
    instance = fleet.instances[0][1]
    main, master = render.instance_main_cf(fleet, instance), render.instance_master_cf(fleet, instance)
    assert "smtpd_sasl_service = postfix-43\n" in main and "smtpd_tls_auth_only = yes\n" in main
    assert "smtpd_sender_restrictions =\n    reject_authenticated_sender_login_mismatch,\n" in main
    assert f"smtpd_client_auth_rate_limit = {render.AUTH_RATE_LIMIT}\n" in main
    assert master.count("-o smtpd_sasl_auth_enable=yes") == 2
    assert "smtpd_sasl_auth_enable" not in master.split("submission", 1)[0]  # not on 25
    plain = parse_config(raw(GOOD))
    assert "sasl" not in render.instance_main_cf(plain, instance)
    assert "sasl" not in render.instance_master_cf(plain, instance)


def test_no_clear_password_reaches_a_plain_input_an_output_or_a_script():
    config = {**raw({**GOOD, "tenants": [ALICE, BOB]})}
    run = run_program(config, ShapeMocks(), secret_keys=["mailfleet:sshPrivateKey", "mailfleet:tenants"])
    for registration in run.monitor.registrations.values():
        plain = {k: v for k, v in registration.inputs.items() if k not in registration.secret_inputs}
        text = json.dumps([plain, registration.outputs], default=str)
        assert PASSWORD not in text and OTHER not in text, registration.name
    for urn, outputs in run.monitor.component_outputs.items():
        assert PASSWORD not in json.dumps(outputs, default=str), urn
    step = run.monitor.named("mx1-tenants")
    assert "stdin" in step.secret_inputs and "stdin" in step.additional_secret_outputs
    assert "{ARGON2ID}" in step.inputs["stdin"] and PASSWORD not in step.inputs["stdin"]
    # postmap reads /etc/postfix/main.cf; the instances' 587 and 465 ask Dovecot.
    assert any(urn.endswith("::mx1-postfix-default") for urn in step.dependencies)
    assert any(urn.endswith("::mx1-tenants") for urn in run.monitor.named("postfix-43-tls").dependencies)
    fleet = with_tenants(ALICE, BOB)
    for name, script in rendered_steps(fleet).items():
        assert PASSWORD not in script and OTHER not in script, name


def test_the_stack_file_check_refuses_a_plaintext_tenant_password():
    import sys
    sys.path.insert(0, str(POLICY))
    import check_stack_file

    plain = {"config": {"mailfleet:tenants": [{"name": "a", "password": "x" * 20, "domains": ["example.com"]}]}}
    assert check_stack_file.plaintext_secrets(plain) == [
        "mailfleet:tenants[0].password is in plaintext: set it with `pulumi config set --secret`"]
    secure = {"config": {"mailfleet:tenants": [{"name": "a", "password": {"secure": "v1:x"}, "domains": ["example.com"]}]}}
    assert check_stack_file.plaintext_secrets(secure) == []


def test_the_dev_stack_example_has_a_tenant_with_a_hash():
    config, _ = stack_config(REPO / "Pulumi.dev.yaml", {"mailfleet:sshPrivateKey": test_config.KEY})
    fleet = parse_config(config)
    assert [t.name for t in fleet.tenants] == ["newsletter"] and fleet.tenants[0].password_hash
