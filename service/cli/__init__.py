"""The `sdedge` command line (serve, generate) and the Python gRPC client; `sdedge = "service.cli:main"`."""

from service.cli.commands import main

__all__ = ["main"]
