"""The public gRPC API (``lmgate/v1/*.proto``) and its generated code: to come with the gRPC issue."""
