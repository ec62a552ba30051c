"""Shared service code: settings, logging, errors, gRPC server helpers, interceptors, generated stubs.

Submodules are imported explicitly (e.g. `from services.common.errors import NotFound`) so that the model
environment, which lacks some services-only packages, can still import the protobuf stubs.
"""
