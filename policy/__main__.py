"""The mailfleet policy pack: `pulumi preview --policy-pack policy`.

The rules themselves, and what a Python policy pack can and cannot check, are in
mailfleet_policy.py.
"""

from pulumi_policy import EnforcementLevel, PolicyPack, ResourceValidationPolicy

from mailfleet_policy import VALIDATORS

DESCRIPTIONS = {
    "dkim-key-strength": "DKIM keys are RSA with at least 2048 bits, or Ed25519.",
    "instance-source-address": "Each Postfix instance sends from the IP it listens on (smtp_bind_address).",
    "milter-never-accept": "Mail is never sent unsigned when the DKIM signer is down (no milter_default_action = accept).",
    "no-plain-private-keys": "Private keys appear only in inputs kept secret (additionalSecretOutputs).",
    "relay-networks-not-open": "No Postfix instance relays for a network wider than /8 (mynetworks).",
}

if __name__ == "__main__":  # the pack serves gRPC from its constructor; importing it must not
    PolicyPack(
        name="mailfleet",
        enforcement_level=EnforcementLevel.MANDATORY,
        policies=[
            ResourceValidationPolicy(name=name, description=DESCRIPTIONS[name], validate=validate,
                                     enforcement_level=EnforcementLevel.MANDATORY)
            for name, validate in VALIDATORS.items()
        ],
    )
