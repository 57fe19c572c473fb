"""Run the real __main__.py in-process under Pulumi's mocks, and record what it registers.

The SDK's stock MockMonitor forgets depends_on, parents, secrets and component outputs; the
RecordingMonitor here keeps them, so tests can check the program's shape. `run_program` can be
called many times in one process (each run gets a fresh root stack).
"""

from __future__ import annotations

import json
import runpy
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SECRET_SIG = rpc._special_sig_key
SECRET_VALUE = rpc._special_secret_sig


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    dependencies: list[str]
    inputs: dict[str, Any]
    secret_inputs: set[str]
    """Top-level input names whose value, or a part of it, arrived as a secret."""
    outputs: dict[str, Any] = field(default_factory=dict)
    additional_secret_outputs: list[str] = field(default_factory=list)


def _unwrap(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            return _unwrap(value["value"])
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _secret_paths(value: Any, path: str = "") -> set[str]:
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            return {path}
        return set().union(*(_secret_paths(v, f"{path}.{k}" if path else k) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(_secret_paths(v, f"{path}[{i}]") for i, v in enumerate(value)))
    return set()


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.registrations: dict[str, Registration] = {}
        self.component_outputs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            raw = json_format.MessageToDict(request.object, preserving_proto_field_name=True)
            registration = Registration(
                type=request.type, name=request.name, urn=response.urn, parent=request.parent,
                dependencies=list(request.dependencies),
                inputs=_unwrap(rpc.deserialize_properties(request.object)),
                secret_inputs={p.split(".")[0].split("[")[0] for p in _secret_paths(raw)},
                additional_secret_outputs=list(request.additionalSecretOutputs),
            )
            registration.outputs = self.resources.get(response.urn, (None, None, {}))[2] if request.custom else {}
            with self._lock:
                self.registrations[response.urn] = registration
        return response

    def RegisterResourceOutputs(self, request):
        with self._lock:
            self.component_outputs[request.urn] = _unwrap(rpc.deserialize_properties(request.outputs))
        return super().RegisterResourceOutputs(request)

    # Queries for the tests.
    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations.values() if r.type == type_]

    def named(self, name: str, type_: str | None = None) -> Registration:
        matches = [r for r in self.registrations.values() if r.name == name and type_ in (None, r.type)]
        assert len(matches) == 1, f"{len(matches)} resources named {name!r}: {sorted(self.registrations)}"
        return matches[0]


@dataclass
class Run:
    monitor: RecordingMonitor
    outputs: dict[str, Any]


def stack_config(stack_file: Path, secrets: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """A Pulumi.<stack>.yaml as the CLI hands it to the program: scalars as text, structured values
    as JSON text. `secrets` are set as `pulumi config set --secret` would, and a `secure:` value
    takes its value from them."""
    document = yaml.safe_load(stack_file.read_text())
    config, secret_keys = {}, []
    for key, value in document.get("config", {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.append(key)
            value = (secrets or {}).get(key, "placeholder-secret")
        config[key] = value if isinstance(value, str) else json.dumps(value)
    for key, value in (secrets or {}).items():
        config[key] = value
        secret_keys += [key] if key not in secret_keys else []
    return config, secret_keys


def run_program(config: dict[str, str], mocks: pulumi.runtime.Mocks, *, secret_keys: list[str] = (),
                stack: str = "test", preview: bool = False) -> Run:
    monitor = RecordingMonitor(mocks)
    settings.ROOT.set(None)  # a fresh root stack per run: set_mocks only makes one when there is none
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    pulumi.runtime.set_mocks(mocks, project="mailfleet", stack=stack, preview=preview, monitor=monitor)

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")

    program()
    outputs_future = settings.get_root_resource().outputs
    outputs = {name: _resolve(value) for name, value in outputs_future.items()}
    return Run(monitor=monitor, outputs=outputs)


def _resolve(value: Any) -> Any:
    """A stack output's plain value (outputs are Outputs, or plain values in an export)."""
    if isinstance(value, pulumi.Output):
        holder: list[Any] = []

        @pulumi.runtime.test
        def read():
            return value.apply(holder.append)

        read()
        return holder[0] if holder else None
    return value
