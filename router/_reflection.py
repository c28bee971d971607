"""Server reflection served as both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection serves only v1alpha, while current tools (grpcurl, grpcui, Postman) ask for v1 first. The two
protocols are the same messages under another package name, so one servicer answers both: calls on v1 are
(de)serialised with the v1alpha classes (the bytes are identical), and a v1 copy of the reflection file is put in
the default descriptor pool, so a tool that asks v1 to describe itself finds it.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA: str = reflection.SERVICE_NAME

_V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection of `service_names` (and of reflection itself, both versions) on `server`."""
    _install_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer((*service_names, REFLECTION_V1, REFLECTION_V1ALPHA))
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (REFLECTION_V1, REFLECTION_V1ALPHA):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": method}),)
        )


def _install_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = f".{file.package}.", ".grpc.reflection.v1."
    file.name, file.package = _V1_FILE, "grpc.reflection.v1"
    file.ClearField("options")
    for message in _messages(file.message_type):
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new, 1)
    for service in file.service:
        for rpc in service.method:
            rpc.input_type = rpc.input_type.replace(old, new, 1)
            rpc.output_type = rpc.output_type.replace(old, new, 1)
    pool.AddSerializedFile(file.SerializeToString())


def _messages(
    messages: Iterable[descriptor_pb2.DescriptorProto],
) -> Iterable[descriptor_pb2.DescriptorProto]:
    for message in messages:
        yield message
        yield from _messages(message.nested_type)
