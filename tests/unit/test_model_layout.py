"""Prefix layout: placeholder counts per source, hierarchical tokens, masks, cold start."""
import pytest

torch = pytest.importorskip("torch")
from training.config import load_config  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402
from training.model.tokens import LayoutError, check_placeholders, source_markers  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)  # tiny matrices: extra threads only add spin-wait on shared, busy cores


@pytest.fixture(scope="module")
def model():
    m = QAnchorModel(load_config("tiny"))
    activate_lora(m)
    return m.eval()


def test_placeholder_count_per_source_equals_k(model):
    ids, ph = model.prefix_ids, model.special.placeholder
    for s in model.cfg.input.sources:
        start, end = (model.special.ids[t] for t in source_markers(s.name))
        i, j = int((ids == start).nonzero()), int((ids == end).nonzero())
        assert int((ids[i + 1: j] == ph).sum()) == s.k
    n_soft = 1 + len(model.cfg.input.sources) + sum(s.k for s in model.cfg.input.sources) + 2
    assert int((ids == ph).sum()) == n_soft == int((model.prefix_slot >= 0).sum())


def test_tampered_template_is_rejected(model):
    ids = model.prefix_ids.clone()
    first_ph = int((ids == model.special.placeholder).nonzero()[-3])  # an event slot of the last source
    ids = torch.cat([ids[:first_ph], ids[first_ph + 1:]])
    with pytest.raises(LayoutError, match="placeholders"):
        check_placeholders(ids, model.cfg.input, model.special)


def test_user_batch_with_wrong_k_is_rejected_with_a_fix(model):
    users = random_users(model.cfg.input, 2)
    users.event_vecs["liked"] = users.event_vecs["liked"][:, :2]
    with pytest.raises(ValueError, match="pad or cut"):
        model.prefix_embeds(users)


def test_absent_events_are_masked_and_do_not_change_the_embedding(model):
    users = random_users(model.cfg.input, 3, seed=1)
    _, valid = model.prefix_embeds(users)
    slots = model.prefix_slot
    n_hdr = 1 + len(model.cfg.input.sources)
    ev = (slots >= n_hdr) & (slots < n_hdr + 9)
    expected = torch.cat([users.event_mask[s.name] for s in model.cfg.input.sources], dim=1)
    assert torch.equal(valid[:, ev], expected)
    # Garbage in padded event rows must not leak: they are masked from attention and from the source mean.
    noisy = random_users(model.cfg.input, 3, seed=1)
    for name, m in noisy.event_mask.items():
        noisy.event_vecs[name][~m] = 123.0
    sc = [ScenarioSpec("Will this user like a comedy?")]
    with torch.no_grad():
        assert torch.allclose(model.full_forward(users, sc), model.full_forward(noisy, sc), atol=1e-6)


def test_cold_start_and_missing_source_use_learned_tokens(model):
    users = random_users(model.cfg.input, 4, seed=2, cold=[0])
    users.event_mask["neutral"][1] = False
    users.event_vecs["neutral"][1] = 0.0
    soft, _ = model.user_encoder(users)
    assert torch.equal(soft[0, 0], model.user_encoder.cold_user)  # user token of the cold user
    assert torch.equal(soft[1, 2], model.user_encoder.missing_source[1])  # source token of the missing source
    with torch.no_grad():
        emb = model.full_forward(users, [ScenarioSpec("Is this a new user?")])
    assert torch.isfinite(emb).all()
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(emb[0], emb[2], atol=1e-3)  # cold user is distinguishable from a real one


def test_without_summary_tokens_the_prefix_holds_only_event_and_tabular_slots():
    """The "w/o user+source tokens" ablation: the header slots leave the template, nothing else moves."""
    full = load_config("tiny")
    ablated = load_config("tiny", ["input.summary_tokens=false"])
    assert ablated.input.summary_tokens is False
    m_full, m_abl = QAnchorModel(full).eval(), QAnchorModel(ablated).eval()
    n_hdr = 1 + len(full.input.sources)
    assert m_abl.prefix_length == m_full.prefix_length - n_hdr
    check_placeholders(m_abl.prefix_ids, ablated.input, m_abl.special)
    placed = m_abl.prefix_slot[m_abl.prefix_slot >= 0]
    assert placed.min() == n_hdr and torch.equal(placed, m_full.prefix_slot[m_full.prefix_slot >= n_hdr])
    # the user and source adapters no longer reach the embedding
    users = random_users(ablated.input, 2, seed=3)
    sc = [ScenarioSpec("Will this user rate a comedy highly?")]
    with torch.no_grad():
        before = m_abl.full_forward(users, sc)
        m_abl.user_encoder.user_adapter.apply(lambda mod: [p.add_(1.0) for p in mod.parameters(recurse=False)])
        m_abl.user_encoder.source_adapter.apply(lambda mod: [p.add_(1.0) for p in mod.parameters(recurse=False)])
        assert torch.allclose(before, m_abl.full_forward(users, sc), atol=1e-6)
    with pytest.raises(LayoutError, match="user \\+ source"):  # a full template does not pass the ablated check
        check_placeholders(m_full.prefix_ids, ablated.input, m_abl.special)
