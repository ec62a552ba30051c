"""Cached prefix inference equals the full forward pass; <USER_EMB> pooling is padding-side independent."""
import pytest

torch = pytest.importorskip("torch")
from training.config import load_config  # noqa: E402
from training.model.prefix_cache import PrefixCache  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)  # tiny matrices: extra threads only add spin-wait on shared, busy cores
QUERIES = ["Will this user click concert ads?", "Likes comedies?", "Is this user likely to churn next month?",
           "x", "Does this user prefer old films to new releases, and rate them higher than average?"]


def build(side: str, arch: str = "llama", attn: str = "eager") -> QAnchorModel:
    cfg = load_config("tiny", [f"input.padding_side={side}", f"backbone.arch={arch}",
                               f"backbone.attn_implementation={attn}"])
    m = QAnchorModel(cfg)
    activate_lora(m)
    return m.eval()


def scenarios(hidden: int, with_prompts: bool) -> list[ScenarioSpec]:
    g = torch.Generator().manual_seed(7)
    out = []
    for i, q in enumerate(QUERIES):
        prompt = torch.randn(1 + i % 3 * 3, hidden, generator=g) * 0.05 if with_prompts and i % 2 == 0 else None
        out.append(ScenarioSpec(q, prompt))
    return out


@pytest.mark.parametrize("side,arch,attn", [("right", "llama", "eager"), ("left", "llama", "eager"),
                                            ("right", "qwen2", "sdpa"), ("left", "qwen2", "sdpa")])
@pytest.mark.parametrize("with_prompts", [False, True])
def test_cached_equals_full_forward(side, arch, attn, with_prompts):
    model = build(side, arch, attn)
    users = random_users(model.cfg.input, 7, seed=3, cold=[5])
    sc = scenarios(model.hidden, with_prompts)
    with torch.no_grad():
        full = model.full_forward(users, sc)
        cached = model.embed(model.encode_prefix(users), sc)
    assert full.shape == cached.shape == (7, len(sc), 128)
    assert (full - cached).abs().max().item() <= 1e-5


def test_pooling_is_identical_for_left_and_right_padding():
    right, left = build("right"), build("left")  # same seeds -> same weights
    users = random_users(right.cfg.input, 4, seed=4)
    sc = scenarios(right.hidden, True)
    with torch.no_grad():
        a, b = right.full_forward(users, sc), left.full_forward(users, sc)
    assert (a - b).abs().max().item() <= 1e-5
    for m in (right, left):
        suf = m._suffix([s.query for s in sc], [s.soft_prompt for s in sc])
        rows = torch.arange(len(sc))
        assert torch.all(suf.ids[rows, suf.emb_pos] == m.special.user_emb)  # pooled exactly at <USER_EMB>
        assert torch.all(suf.valid[rows, suf.emb_pos])
    assert suf.valid[:, 0].logical_not().any()  # left: some row really starts with padding


def test_cache_slices_concatenate_and_are_not_mutated():
    model = build("right")
    users = random_users(model.cfg.input, 5, seed=5)
    sc = scenarios(model.hidden, True)
    with torch.no_grad():
        cache = model.encode_prefix(users)
        before = [k.clone() for k in cache.keys]
        whole = model.embed(cache, sc)
        per_user = torch.cat([model.embed(cache[i], sc) for i in range(5)])
        rebatched = model.embed(PrefixCache.cat([cache[3], cache[0]]), sc[:2])
    assert all(torch.equal(a, b) for a, b in zip(before, cache.keys))
    assert (whole - per_user).abs().max().item() <= 1e-5
    assert (rebatched - whole[[3, 0]][:, :2]).abs().max().item() <= 1e-5
    layers, kv_heads = model.cfg.backbone.layers, model.cfg.backbone.kv_heads
    head_dim = model.cfg.backbone.hidden // model.cfg.backbone.heads
    expected = 2 * layers * 5 * kv_heads * model.prefix_length * head_dim * 4 + 5 * model.prefix_length + 5 * 8
    assert cache.nbytes == expected
    assert cache[2].nbytes * 5 == cache.nbytes


def test_collect_writes_batches_into_one_cache_equal_to_cat():
    """PrefixCache.collect (one allocation, filled batch by batch) gives the cache cat gives; inference-mode batches
    collected outside it still carry a soft prompt's gradient; a wrong user count is refused."""
    model = build("right")
    users = random_users(model.cfg.input, 5, seed=7)

    def batches():
        for s in range(0, 5, 2):
            with torch.inference_mode():
                yield model.encode_prefix(users[s:s + 2])

    got = PrefixCache.collect(batches(), 5)
    want = PrefixCache.cat(list(batches()))
    for a, b in zip([*got.keys, *got.values, got.valid, got.next_pos],
                    [*want.keys, *want.values, want.valid, want.next_pos]):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    prompt = torch.zeros(6, model.hidden, requires_grad=True)
    model.embed(got, [ScenarioSpec("Likes comedies?", prompt)]).sum().backward()
    assert prompt.grad is not None and torch.isfinite(prompt.grad).all()
    with pytest.raises(ValueError, match="expected 6"):
        PrefixCache.collect(batches(), 6)
    with pytest.raises(ValueError, match="more than total=4"):
        PrefixCache.collect(batches(), 4)


def test_soft_prompt_gradients_flow_through_the_cached_path():
    model = build("right")
    users = random_users(model.cfg.input, 3, seed=6)
    with torch.no_grad():
        cache = model.encode_prefix(users)
    prompt = torch.zeros(6, model.hidden, requires_grad=True)
    emb = model.embed(cache, [ScenarioSpec("Likes comedies?", prompt)])
    emb.sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0


def test_hidden_embedding_is_the_normalised_user_emb_state_on_both_paths():
    """head.embedding=hidden serves the <USER_EMB> state itself (width = backbone hidden), cached == uncached, and
    the head's output is that state through the head: one model, two read-outs of one forward."""
    projected = build("right")
    hidden = QAnchorModel(load_config("tiny", ["input.padding_side=right", "head.embedding=hidden"]))
    activate_lora(hidden)
    hidden.load_trainable_state_dict(projected.trainable_state_dict())
    hidden.eval()
    assert hidden.embedding_dim == hidden.hidden != projected.embedding_dim == projected.cfg.head.out
    users = random_users(hidden.cfg.input, 5, seed=8, cold=[4])
    sc = scenarios(hidden.hidden, True)
    with torch.no_grad():
        full = hidden.full_forward(users, sc)
        cached = hidden.embed(hidden.encode_prefix(users), sc)
        via_head = projected.embed(projected.encode_prefix(users), sc)
    assert full.shape == cached.shape == (5, len(sc), hidden.hidden)
    assert (full - cached).abs().max().item() <= 1e-5
    assert torch.allclose(full.norm(dim=-1), torch.ones(5, len(sc)), atol=1e-5)
    # the head's input in the projected model (same weights, same forward) is exactly the state served here
    seen = []
    hook = projected.head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            projected.embed(projected.encode_prefix(users), sc)
    finally:
        hook.remove()
    state = torch.nn.functional.normalize(seen[0], dim=-1).view(5, len(sc), -1)
    assert (state - cached).abs().max().item() <= 1e-5
    with torch.no_grad():  # and what the projected model serves is that state through its head
        through_head = torch.nn.functional.normalize(projected.head(seen[0].float()), dim=-1).view(5, len(sc), -1)
    assert (through_head - via_head).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_served_layer_cuts_inference_and_leaves_training_whole(arch):
    """head.layer=1 (of 2): cached == uncached at the cut, the state is layer 1's residual stream through the final
    norm, the prefix cache holds one layer, and the training towers still run every layer."""
    whole = QAnchorModel(load_config("tiny", ["input.padding_side=right", f"backbone.arch={arch}",
                                              "head.embedding=hidden"]))
    activate_lora(whole)
    cut = QAnchorModel(load_config("tiny", ["input.padding_side=right", f"backbone.arch={arch}",
                                            "head.embedding=hidden", "head.layer=1"]))
    cut.load_trainable_state_dict(whole.trainable_state_dict())
    whole.eval(), cut.eval()
    assert cut.served_layers == 1 and whole.served_layers == whole.n_layers == 2
    users = random_users(cut.cfg.input, 4, seed=2, cold=[3])
    sc = scenarios(cut.hidden, True)
    lm = whole._lm().model
    seen = []
    hook = lm.layers[0].register_forward_hook(lambda mod, inp, out: seen.append(out[0] if isinstance(out, tuple)
                                                                                 else out))
    try:
        with torch.no_grad():
            cache = cut.encode_prefix(users)
            cached = cut.embed(cache, sc)
            full = cut.full_forward(users, sc)
            whole.full_forward(users, sc)  # every layer runs; the hook keeps layer 1's output of the same rows
    finally:
        hook.remove()
    assert len(cache.keys) == 1 and len(whole.encode_prefix(users).keys) == 2
    assert (full - cached).abs().max().item() <= 1e-5
    with torch.no_grad():  # the <USER_EMB> rows of the whole model's layer-1 output, through the final norm
        suf = whole._suffix([s.query for s in sc] * 4, [s.soft_prompt for s in sc] * 4)
        rows = torch.arange(4 * len(sc))
        state = seen[0][rows, whole.prefix_length + suf.emb_pos]
        expect = torch.nn.functional.normalize(lm.norm(state), dim=-1).view(4, len(sc), -1)
        assert (expect - full).abs().max().item() <= 1e-5
        assert (whole.full_forward(users, sc) - full).abs().max().item() > 1e-3  # another read-out indeed
        with pytest.raises(ValueError, match="encode the prefix again"):
            whole.embed(cache, sc)
        # training: the same loss whatever the read-out (the towers use every layer)
        qs, ans = [sc[0].query] * 4, ["yes"] * 4
        a, b = whole.pretrain_forward(users, qs, ans), cut.pretrain_forward(users, qs, ans)
        assert torch.allclose(a.anchor, b.anchor, atol=1e-6) and a.ntp_sum.item() == pytest.approx(b.ntp_sum.item())
    assert lm.config.num_hidden_layers == 2  # restored after every pass


def test_served_layer_beyond_the_backbone_is_refused():
    with pytest.raises(ValueError, match="layers 1..2"):
        QAnchorModel(load_config("tiny", ["head.embedding=hidden", "head.layer=3"]))


def test_layer_scan_hooks_read_what_a_cut_model_serves():
    """benchmarks/quality/layer_scan.py reads every layer in one packed pass: its layer-1 states are what a model
    cut after layer 1 serves, its last layer's the served embedding (the packing's gather index is the model's)."""
    from benchmarks.quality.layer_scan import _embed_hooked

    whole = QAnchorModel(load_config("tiny", ["input.padding_side=left", "head.embedding=hidden"]))
    activate_lora(whole)
    cut = QAnchorModel(load_config("tiny", ["input.padding_side=left", "head.embedding=hidden", "head.layer=1"]))
    cut.load_trainable_state_dict(whole.trainable_state_dict())
    whole.eval(), cut.eval()
    users = random_users(whole.cfg.input, 3, seed=4, cold=[1])
    sc = scenarios(whole.hidden, False)
    lm = whole._lm().model
    captured = {}
    hooks = [lm.layers[i].register_forward_hook(
        lambda mod, inp, out, i=i: captured.__setitem__(i + 1, out[0] if isinstance(out, tuple) else out))
        for i in range(2)]
    try:
        with torch.no_grad():
            states = _embed_hooked(whole, whole.encode_prefix(users), sc, captured, [1, 2])  # [B, S, 2, hidden]
            served_cut = cut.embed(cut.encode_prefix(users), sc)
            served = whole.embed(whole.encode_prefix(users), sc)
    finally:
        for h in hooks:
            h.remove()
    assert states.shape == (3, len(sc), 2, whole.hidden)
    assert (states[:, :, 0] - served_cut).abs().max().item() <= 1e-5
    assert (states[:, :, 1] - served).abs().max().item() <= 1e-5


def test_shared_entries_read_like_the_tokens_whose_keys_and_values_they_are():
    """PrefixCache.with_shared appends positionless keys/values for every user: given the keys and values real
    tokens X compute over the prefix (query_kv), and the suffix moved on by len(X), a query reads them exactly as it
    reads X written before it in the suffix. No entries: the cache embeds as before. Gradients reach the entries."""
    model = build("right")
    tok = model.tokenizer
    x, q = "Likes comedies?", " Will this user churn next month?"
    n_x = len(tok(x, add_special_tokens=False)["input_ids"])
    assert tok(x + q, add_special_tokens=False)["input_ids"][:n_x] == tok(x, add_special_tokens=False)["input_ids"]
    users = random_users(model.cfg.input, 3, seed=5)
    with torch.no_grad():
        cache = model.encode_prefix(users)
        want = model.embed(cache, [ScenarioSpec(x + q)])[:, 0]
        got = []
        for i in range(3):
            keys, values = model.query_kv(cache[i], x)  # X's tokens, then <USER_EMB>
            ext = cache[i].with_shared([k[0, :, :n_x] for k in keys], [v[0, :, :n_x] for v in values])
            ext = PrefixCache(ext.keys, ext.values, ext.valid, ext.next_pos + n_x)
            got.append(model.embed(ext, [ScenarioSpec(q)])[0, 0])
        torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=1e-4)
        none = cache.with_shared([k[0, :, :0] for k in cache.keys], [v[0, :, :0] for v in cache.values])
        assert torch.equal(model.embed(none, [ScenarioSpec(q)]), model.embed(cache, [ScenarioSpec(q)]))
    deep = [torch.zeros(k.shape[1], 2, k.shape[3], requires_grad=True) for k in cache.keys]
    model.embed(cache.with_shared(deep, deep), [ScenarioSpec(q)]).sum().backward()
    assert all(d.grad is not None and torch.isfinite(d.grad).all() for d in deep) and deep[-1].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="layers of extra keys"):
        cache.with_shared(deep[:1], deep[:1])
