"""Clients of the gateway's three dependencies: the model server, the feature store and the registry."""
