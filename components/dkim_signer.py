"""DkimSigner: DKIM signing on one host (OpenDKIM, mailfleet/signing.py), for every Postfix instance on it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.remote_step import remote_step
from mailfleet import signing
from mailfleet.config import DkimKey


@dataclass
class DkimSignerArgs:
    keys: list[DkimKey]
    """Every key of mailfleet:dkim, in config order."""
    private_keys: dict[str, pulumi.Output[str]]
    """Record name (selector._domainkey.domain) -> private key PEM (secret)."""
    networks: list[str]
    """The clients whose mail is signed: the loopback and the relay networks."""
    connection: remote.ConnectionArgs
    ssh_user: str


class DkimSigner(pulumi.ComponentResource):
    ready: remote.Command
    """The last step: OpenDKIM runs with this configuration and signs as probed."""

    def __init__(self, name: str, args: DkimSignerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:DkimSigner", name, None, opts)
        # The steps wait for what the component waits for (the packages).
        depends_on = opts.depends_on if opts else None
        after = list(depends_on) if isinstance(depends_on, (list, tuple)) else [depends_on] if depends_on else []
        by_record = {key.record_name: key for key in args.keys}
        keys_script = pulumi.Output.all(**args.private_keys).apply(
            lambda pems: signing.keys_step({by_record[n]: pem for n, pem in pems.items()}))
        # The names stay those of the first OpenDKIM steps: a new name would run the keys step's
        # delete, which removes every key.
        keys = remote_step(f"{name}-keys", args.connection, args.ssh_user, keys_script, secret=True,
                           delete_script=signing.keys_delete_step(), parent=self, depends_on=after)
        self.ready = remote_step(f"{name}-config", args.connection, args.ssh_user,
                                 signing.config_step(args.keys, args.networks), parent=self, depends_on=[keys])
        self.register_outputs({"selectors": sorted(by_record)})
