"""Measurements of rankshard through its public surfaces (gRPC and the CLI)."""
