"""DkimSigner: DKIM signing on one host (OpenDKIM, mailfleet/signing.py), for every Postfix instance on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
from pulumi_command import remote

from components.remote_step import remote_step
from mailfleet import signing
from mailfleet.config import DkimKey


@dataclass(frozen=True)
class DkimSignerArgs:
    keys: Sequence[DkimKey]
    """Every key of mailfleet:dkim, in config order: the tables, and what each process must sign."""
    private_keys: dict[str, pulumi.Output[str]]
    """Record name (selector._domainkey.domain) -> private key PEM (secret), from DkimKeys."""
    networks: Sequence[str]
    """The clients whose mail is signed: the loopback and the relay networks."""
    connection: remote.ConnectionArgs
    """How to reach the host over SSH."""
    ssh_user: str
    """The SSH user, root or one that runs the steps through sudo."""
    by_envelope: bool = False
    """Choose the key by the envelope sender, not the From: field (with tenants, whose envelope
    senders Postfix binds to their own domains)."""
    after: Sequence[pulumi.Resource] = ()
    """The steps that must be done on the host first (the packages)."""


class DkimSigner(pulumi.ComponentResource):
    ready: remote.Command
    """The last step: OpenDKIM runs with this configuration and signs as probed."""

    def __init__(self, name: str, args: DkimSignerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:DkimSigner", name, None, opts)
        by_record = {key.record_name: key for key in args.keys}
        keys_script = pulumi.Output.all(**args.private_keys).apply(
            lambda pems: signing.keys_step({by_record[n]: pem for n, pem in pems.items()}))
        # The names stay those of the first OpenDKIM steps: a new name would run the keys step's
        # delete, which removes every key.
        keys = remote_step(f"{name}-keys", args.connection, args.ssh_user, keys_script, secret=True,
                           delete_script=signing.keys_delete_step(), parent=self, depends_on=args.after)
        self.ready = remote_step(f"{name}-config", args.connection, args.ssh_user,
                                 signing.config_step(args.keys, args.networks, args.by_envelope), parent=self, depends_on=[keys])
        self.register_outputs({"selectors": sorted(by_record)})
