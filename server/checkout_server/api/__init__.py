"""The API layer: the gRPC servicer (protobuf <-> domain only), the REST upload body parser,
interceptors and health."""
