"""Registering services with a request parser that turns undecodable bytes into a clear error.

The generated ``add_*Servicer_to_server`` functions parse with ``FromString``, and a parse failure
(say, invalid UTF-8 in a string field, which clients in other languages can send) reaches the client
as UNKNOWN with no field named. Here it becomes an `Undecodable` request, which the handler wrapper
answers with INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from ._auth import GuardedService, Tokens


class Undecodable:
    """A request whose bytes are not a valid message; `problem` names the field when it can."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def add_service(
    server: grpc.aio.Server,
    servicer: Any,
    service: ServiceDescriptor,
    module: ModuleType,
    tokens: Tokens | None = None,
    admin_only: bool = False,
) -> None:
    """Serves `servicer`'s methods of `service`, whose message classes live in `module`. With `tokens`, only to
    calls whose token they accept for the service (`admin_only`: the admin role; else any role)."""
    handlers = {}
    for method in service.methods:
        request_cls = getattr(module, method.input_type.name)
        response_cls = getattr(module, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    if tokens is None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
        return
    paths = {f"/{service.full_name}/{name}": handler for name, handler in handlers.items()}
    server.add_generic_rpc_handlers((GuardedService(paths, tokens, admin_only),))


def _lenient(message_cls: Any) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except DecodeError:
            return Undecodable(_describe(message_cls.DESCRIPTOR, data))

    return parse


def _describe(descriptor: Descriptor, data: bytes) -> str:
    bad = _bad_string_field(descriptor, data, "")
    if bad:
        return f"{bad}: is not valid UTF-8"
    return f"request: is not a valid {descriptor.full_name}"


def _bad_string_field(descriptor: Descriptor, data: bytes, prefix: str) -> str | None:
    """The path of the first string field holding invalid UTF-8, walking the wire format."""
    counts: dict[str, int] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
                continue
            if wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
                continue
            if wire_type != 2:
                return None
            size, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + size], pos + size
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            name = prefix + field.name
            if field.is_repeated:
                counts[field.name] = counts.get(field.name, -1) + 1
                name += f"[{counts[field.name]}]"
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return name
            elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
                found = _bad_string_field(field.message_type, chunk, name + ".")
                if found:
                    return found
    except IndexError:
        return None
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
