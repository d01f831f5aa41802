"""Placement: from a request to a stream on one replica: the model registry, routing policy, admission,
dispatch and drain. Transport-free: both edges call ``Dispatcher.open``."""
