import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/hf_models.py and tests/helpers.py

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory):
    """Weight-hash and judge caches of the test session, not the user's (the variable is
    restored when the session ends)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFEVAL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """hf_dir(kind, **options) -> directory of a random tiny HF checkpoint (cached per options)."""
    from hf_models import make_hf

    made = {}

    def make(kind: str, **options):
        key = (kind, tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key not in made:
            made[key] = make_hf(kind, tmp_path_factory.mktemp(kind), **options)
        return made[key]

    return make
