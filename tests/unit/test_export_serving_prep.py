"""Serving preparation of an exported model (training.export.runtime): LoRA merged into the base weights gives
the same embeddings as the unmerged model's full forward, and the thread settings are applied."""
import copy
import os

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
from training.config import load_config  # noqa: E402
from training.export.artifact import LoadedModel  # noqa: E402
from training.export.runtime import (EmbedRequest, QAnchorRuntime, configure_threads,  # noqa: E402
                                     prepare_for_serving, to_user_batch)
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402

pytestmark = pytest.mark.model
QUERIES = ["Will this user click concert ads?", "Likes comedies?", "Is this user likely to churn next month?"]


def _requests(model, n: int) -> list[EmbedRequest]:
    users = random_users(model.cfg.input, n, seed=3, cold=[n - 1])
    return [EmbedRequest(user_id=f"u{i}", feature_version=0 if i == n - 1 else 2, model_version="",
                         event_vecs={s: users.event_vecs[s][i].numpy().astype(np.float16) for s in users.event_vecs},
                         event_mask={s: users.event_mask[s][i].numpy() for s in users.event_mask},
                         tabular=users.tabular[i].numpy(), queries=QUERIES) for i in range(n)]


def test_merged_lora_serves_the_unmerged_full_forward():
    torch.manual_seed(0)
    model = QAnchorModel(load_config("tiny"))
    activate_lora(model)  # non-zero adapters, so merging actually changes the weights
    model.eval()
    served = copy.deepcopy(model)
    prepare_for_serving(served)
    assert not hasattr(served.backbone, "merge_and_unload"), "the peft wrapper should be gone after merging"
    assert not any("lora_" in n for n, _ in served.named_parameters())
    assert not any(p.requires_grad for p in served.parameters())
    rt = QAnchorRuntime([LoadedModel(served, served.cfg, "tiny-v1", "preset:tiny", {})])
    reqs = _requests(model, 3)
    for rounds in range(2):  # prefix miss, then hit
        for r, res in zip(reqs, rt.serve(reqs)):
            with torch.no_grad():
                ref = model.full_forward(to_user_batch([r], model), [ScenarioSpec(q) for q in QUERIES])[0].numpy()
            assert res.cache_hit == bool(rounds)
            assert np.abs(res.embedding - ref).max() <= 1e-5


def test_prepare_for_serving_without_lora_is_a_no_op_on_weights():
    model = QAnchorModel(load_config("tiny", overrides=["lora.enabled=false"])).eval()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    prepare_for_serving(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_configure_threads_sets_intra_op_and_passive_wait(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    try:
        assert configure_threads(1) == 1 == torch.get_num_threads()
        assert torch.get_num_interop_threads() >= 1
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        assert configure_threads(0) == 1  # 0 keeps whatever is set
    finally:
        torch.set_num_threads(before)
