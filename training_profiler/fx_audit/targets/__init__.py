"""What a device adds to the memory simulation: kernel workspaces that fake kernels do not show.

Fake kernels give every op's outputs their right shapes but know nothing of the buffers a
device's libraries allocate behind them (oneDNN reorders and scratchpads on the CPU, cuBLAS /
cuDNN workspaces on CUDA). A target is a small table of ``WorkspaceRule`` keyed by aten op name;
the storage tracker looks every op up in the table of the simulated device and adds what the
rule returns. Each rule cites where its numbers come from.
"""

from __future__ import annotations

from .workspace import WorkspaceRule

__all__ = ["WorkspaceRule", "workspace_rules"]


def workspace_rules(device_type: str) -> dict[str, WorkspaceRule]:
    """The rules of the simulated device type, keyed by op (none for devices without a table)."""
    if device_type == "cpu":
        from .cpu import cpu_rules

        return cpu_rules()
    return {}
