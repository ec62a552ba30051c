"""Dual towers: NTP labels only on answer tokens; semantic tower pools the last real token."""
import pytest

torch = pytest.importorskip("torch")
from training.config import load_config  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import IGNORE  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)  # tiny matrices: extra threads only add spin-wait on shared, busy cores


@pytest.fixture(scope="module", params=["right", "left"])
def model(request):
    m = QAnchorModel(load_config("tiny", [f"input.padding_side={request.param}"]))
    activate_lora(m)
    return m.eval()


def test_ntp_labels_cover_exactly_the_answer_tokens(model):
    queries, answers = ["What will this user do next?", "Genre?"], ["Watch three comedies.", "Drama"]
    suf = model._suffix(queries, [None, None], answers)
    tok = model.tokenizer
    for i, (q, a) in enumerate(zip(queries, answers)):
        labelled = suf.labels[i][suf.labels[i] != IGNORE].tolist()
        assert labelled == tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        first = int((suf.labels[i] != IGNORE).nonzero()[0])
        assert first == int(suf.emb_pos[i]) + 1  # the answer starts right after <USER_EMB>
        assert torch.equal(suf.ids[i][suf.labels[i] != IGNORE], suf.labels[i][suf.labels[i] != IGNORE])


def test_ntp_loss_is_the_mean_answer_cross_entropy_and_only_answers_count(model):
    users = random_users(model.cfg.input, 2, seed=1)
    out = model.pretrain_forward(users, ["Next?", "Next?"], ["Comedy night.", "Drama"])
    n_answer = sum(len(model.tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in ["Comedy night.",
                                                                                                "Drama"])
    assert out.ntp_tokens == n_answer
    assert out.anchor.shape == out.answer.shape == (2, 128)
    # The anchor embedding is causal: it must not depend on the answer that follows <USER_EMB>.
    other = model.pretrain_forward(users, ["Next?", "Next?"], ["Something else entirely", "x"])
    assert (out.anchor - other.anchor).abs().max().item() <= 1e-5
    out.ntp_sum.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    model.zero_grad()


def test_semantic_tower_ignores_padding(model):
    with torch.no_grad():
        batch = model.encode_answers(["short", "a much longer answer text with many more tokens"])
        alone = model.encode_answers(["short"])
    assert (batch[0] - alone[0]).abs().max().item() <= 1e-5
    assert torch.allclose(batch.norm(dim=-1), torch.ones(2), atol=1e-5)
