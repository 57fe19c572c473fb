"""DkimSigner: the one DKIM signer of a host (mailfleet-signer), for every Postfix instance on it."""

from __future__ import annotations

from typing import Sequence

import pulumi
from pulumi_command import remote

from components.remote_step import remote_step
from mailfleet import remote_scripts
from mailfleet.config import Fleet
from mailfleet.signer_build import SignerBinary


class DkimSigner(pulumi.ComponentResource):
    ready: remote.Command
    """The last step: the signer runs with this configuration and OpenDKIM is retired."""

    def __init__(self, name: str, fleet: Fleet, private_keys: dict[str, pulumi.Output[str]], binary: SignerBinary,
                 connection: remote.ConnectionArgs, ssh_user: str, depends_on: Sequence[pulumi.Resource],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:DkimSigner", name, None, opts)
        by_record = {key.record_name: key for key in fleet.dkim}
        keys_script = pulumi.Output.all(**private_keys).apply(
            lambda pems: remote_scripts.dkim_keys({by_record[n]: pem for n, pem in pems.items()}))
        keys = remote_step(f"{name}-keys", connection, ssh_user, keys_script, secret=True,
                           delete_script=remote_scripts.dkim_keys_delete(),
                           parent=self, depends_on=depends_on)
        # The upload is named by the binary's checksum, and the step below installs only that one.
        upload = remote.CopyToRemote(f"{name}-binary", connection=connection,
                                     source=pulumi.FileAsset(str(binary.path)),
                                     remote_path=remote_scripts.signer_upload(binary.sha256),
                                     opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on)))
        self.ready = remote_step(f"{name}-config", connection, ssh_user,
                                 remote_scripts.signer(fleet, ssh_user, binary.sha256),
                                 parent=self, depends_on=[keys, upload])
        self.register_outputs({"selectors": sorted(by_record)})
