"""Scenario registry: scenarios (name + anchor query), prompt versions, tuning jobs; served over gRPC."""
