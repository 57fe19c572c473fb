"""The provider gRPC protocol for the stand-in plugins (pulumi-resource-command, -tls, -vsphere).

The real pulumi-command, pulumi-tls and pulumi-vsphere are Go programs whose modules the Go module
proxy does not serve, so these stand-ins answer the same protocol for exactly the resources and
functions mailfleet uses. They are NOT the real providers (docs/toolchain.md).

A subclass gives `version`, `resources` (type token -> Resource) and `functions` (token -> callable).
Every input change replaces the resource, as for the real tls resources (all ForceNew).
"""

from __future__ import annotations

import json
import sys
from concurrent import futures
from typing import Any, Callable

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import plugin_pb2, provider_pb2, provider_pb2_grpc

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # the engine's "computed" sentinel
SIG = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17"  # {SIG: ASSET_SIG, hash, path | text | uri}
ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7"  # {SIG: ARCHIVE_SIG, hash, path | uri | assets}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG) == SECRET_SIG


def plain(value: Any) -> Any:
    """The value with every secret wrapper removed (the stand-in computes on clear values)."""
    if is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def secret(value: Any) -> dict:
    return {SIG: SECRET_SIG, "value": value}


def has_unknown(value: Any) -> bool:
    if value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


def to_dict(struct: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(struct)


def to_struct(value: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


class Resource:
    """One resource type: `defaults` fill Check, `compute(inputs)` returns the outputs it adds,
    `secret_outputs` are wrapped as secrets, `unknown_outputs` are what a preview cannot know."""
    defaults: dict = {}
    secret_outputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def make_id(self, inputs: dict, outputs: dict) -> str:
        raise NotImplementedError

    def compute(self, inputs: dict) -> dict:
        raise NotImplementedError


class Servicer(provider_pb2_grpc.ResourceProviderServicer):
    name = ""
    version = ""
    resources: dict[str, Resource] = {}
    functions: dict[str, Callable[[dict], dict]] = {}

    def __init__(self):
        self.accept_secrets = False

    # Plugin lifecycle
    def GetPluginInfo(self, request, context):
        return plugin_pb2.PluginInfo(version=self.version)

    def GetSchema(self, request, context):
        return provider_pb2.GetSchemaResponse(schema=json.dumps({
            "name": self.name, "version": self.version,
            "description": f"mailfleet's stand-in for pulumi-resource-{self.name}, not the real provider"}))

    def CheckConfig(self, request, context):
        return provider_pb2.CheckResponse(inputs=request.news)

    def DiffConfig(self, request, context):
        return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_NONE)

    def Configure(self, request, context):
        self.accept_secrets = request.acceptSecrets
        return provider_pb2.ConfigureResponse(acceptSecrets=True, supportsPreview=True)

    def Cancel(self, request, context):
        return empty_pb2.Empty()

    # Resources
    def _resource(self, urn: str, context) -> Resource:
        type_token = urn.split("::")[2].split("$")[-1]
        if type_token not in self.resources:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"stand-in {self.name} has no resource {type_token}")
        return self.resources[type_token]

    def Check(self, request, context):
        resource = self._resource(request.urn, context)
        news = to_dict(request.news)
        inputs = {**resource.defaults, **news}
        return provider_pb2.CheckResponse(inputs=to_struct(inputs))

    def Diff(self, request, context):
        news = to_dict(request.news)
        olds = to_dict(request.old_inputs) if request.HasField("old_inputs") else to_dict(request.olds)
        changed = sorted(k for k in set(news) | set(olds)
                         if k not in request.ignoreChanges and plain(news.get(k)) != plain(olds.get(k)))
        if not changed:
            return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_NONE)
        detailed = {k: provider_pb2.PropertyDiff(kind=provider_pb2.PropertyDiff.UPDATE_REPLACE, inputDiff=True)
                    for k in changed}
        return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_SOME, replaces=changed,
                                         diffs=changed, detailedDiff=detailed, hasDetailedDiff=True)

    def _outputs(self, resource: Resource, inputs: dict, preview: bool) -> tuple[str, dict]:
        if preview or has_unknown(inputs):
            computed = {name: UNKNOWN for name in resource.outputs}
            return "", {**inputs, **computed}
        computed = resource.compute(plain(inputs))
        for name in resource.secret_outputs:
            if name in computed:
                computed[name] = secret(computed[name])
        return resource.make_id(plain(inputs), computed), {**inputs, **computed}

    def Create(self, request, context):
        resource = self._resource(request.urn, context)
        try:
            resource_id, properties = self._outputs(resource, to_dict(request.properties), request.preview)
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return provider_pb2.CreateResponse(id=resource_id, properties=to_struct(properties))

    def Update(self, request, context):
        # Every change replaces, so the engine never asks for an in-place update of a changed
        # input; an update with equal inputs keeps the outputs.
        return provider_pb2.UpdateResponse(properties=request.olds)

    def Read(self, request, context):
        # Nothing lives outside the state: what the state holds is what there is.
        return provider_pb2.ReadResponse(id=request.id, properties=request.properties, inputs=request.inputs)

    def Delete(self, request, context):
        return empty_pb2.Empty()

    # Functions
    def Invoke(self, request, context):
        if request.tok not in self.functions:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"stand-in {self.name} has no function {request.tok}")
        try:
            result = self.functions[request.tok](plain(to_dict(request.args)))
        except LookupError as error:
            return provider_pb2.InvokeResponse(failures=[provider_pb2.CheckFailure(reason=str(error))])
        return provider_pb2.InvokeResponse(**{"return": to_struct(result)})


def serve(servicer: Servicer) -> None:
    """Serve on a free loopback port and print it: that line is the plugin handshake."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    provider_pb2_grpc.add_ResourceProviderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    server.wait_for_termination()
