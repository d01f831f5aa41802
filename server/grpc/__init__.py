"""The gRPC edge: the public ``lmgate.v1.Inference`` servicer, its registration, health and reflection."""
