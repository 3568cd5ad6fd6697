"""Server reflection in both versions clients use: grpc.reflection.v1 (current grpcurl, Postman,
grpc_cli, @grpc/reflection) and the older v1alpha.

grpcio-reflection ships v1alpha only. v1 has the same messages with the same field numbers under
another package, so the v1alpha servicer answers v1 calls byte for byte. v1's descriptor is
derived from v1alpha's (package and type names renamed) so that v1 can describe itself too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
_ALPHA_PREFIX, _V1_PREFIX = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."


def enable(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serve reflection v1 and v1alpha for `service_names` plus both reflection services."""
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.ReflectionServicer((*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1_method}),))


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
        return  # a second server in the same process
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's language options name v1alpha packages
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # setting it on a scalar field, even to "", breaks the file
                field.type_name = field.type_name.replace(_ALPHA_PREFIX, _V1_PREFIX)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_ALPHA_PREFIX, _V1_PREFIX)
            method.output_type = method.output_type.replace(_ALPHA_PREFIX, _V1_PREFIX)
    pool.AddSerializedFile(proto.SerializeToString())
