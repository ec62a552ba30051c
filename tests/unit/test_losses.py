"""InfoNCE with the margin filter (checked against a hand computation) and GradCache gradient equivalence."""
import math

import pytest

torch = pytest.importorskip("torch")
from training.config import LossConfig, load_config  # noqa: E402
from training.losses import contrastive_loss, grad_cache_step, total_loss  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)  # tiny matrices: extra threads only add spin-wait on shared, busy cores


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


def cos(a, b):
    return sum(x * y for x, y in zip(a, b))


def hand_loss(u, d, tau, margin, terms):
    """Plain-Python transcription of the loss definition in training/losses.py."""
    u, d = u.tolist(), d.tolist()
    total = 0.0
    for i in range(len(u)):
        pos = cos(u[i], d[i])
        z = math.exp(pos / tau)
        for j in range(len(u)):
            if j == i:
                continue
            sims = {"ud": cos(u[i], d[j]), "uu": cos(u[i], u[j]), "du": cos(d[i], u[j]), "dd": cos(d[i], d[j])}
            for t in terms:
                if sims[t] <= pos + margin:
                    z += math.exp(sims[t] / tau)
        total += -math.log(math.exp(pos / tau) / z)
    return total / len(u)


U = unit([1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.3, 1.0], [0.5, 0.5, 0.5])
D = unit([0.9, 0.3, 0.1], [0.3, 0.8, 0.1], [0.2, 0.1, 0.9], [0.4, 0.7, 0.2])


@pytest.mark.parametrize("preset", ["paper", "code"])
@pytest.mark.parametrize("tau,margin", [(0.07, 0.1), (0.5, 0.0), (1.0, 10.0)])
def test_infonce_matches_hand_computation(preset, tau, margin):
    cfg = LossConfig(tau=tau, margin=margin, negative_terms=preset)
    got = contrastive_loss(U, D, cfg).item()
    assert got == pytest.approx(hand_loss(U, D, tau, margin, cfg.negative_terms), rel=1e-9)


def test_margin_filter_drops_a_planted_false_negative():
    # Row 1's answer is a copy of anchor 0 (think: two users with the same answer text), scoring far above
    # anchor 0's own, looser positive: for anchor 0 it is a false negative.
    d = D.clone()
    d[0] = unit([0.6, 0.8, 0.4])[0]
    d[1] = U[0]
    pos = float(U[0] @ d[0])
    assert float(U[0] @ d[1]) > pos + 0.1  # the plant really trips the filter
    kept = [float(U[0] @ d[j]) for j in (2, 3)]
    assert all(s <= pos + 0.1 for s in kept)  # ...and nothing else does
    cfg = LossConfig(tau=0.07, margin=0.1, negative_terms=["ud"])
    row0 = contrastive_loss(U, d, cfg, reduction="none")[0].item()
    expected = -pos / 0.07 + math.log(math.exp(pos / 0.07) + sum(math.exp(s / 0.07) for s in kept))
    assert row0 == pytest.approx(expected, rel=1e-9)
    no_filter = LossConfig(tau=0.07, margin=100.0, negative_terms=["ud"])
    assert contrastive_loss(U, d, no_filter, reduction="none")[0].item() > row0 + 1.0  # the plant dominated
    assert contrastive_loss(U, d, cfg).item() == pytest.approx(hand_loss(U, d, 0.07, 0.1, ["ud"]), rel=1e-9)


def _six_users(*overrides):
    """The tiny model (LoRA active, no dropout) and a 6-user batch with queries and answers."""
    cfg = load_config("tiny", ["lora.dropout=0.0", *overrides])
    model = QAnchorModel(cfg)
    activate_lora(model)
    model.train()
    users = random_users(cfg.input, 6, seed=8)
    queries = ["What will this user do next?"] * 3 + ["Favourite genre?"] * 3
    answers = ["Watch comedies.", "Rate dramas low.", "Binge thrillers", "Comedy", "Drama", "Sci-fi classics"]
    return cfg, model, users, queries, answers


@pytest.mark.parametrize("identity", [None, "hidden", "embedding"])
def test_gradcache_gradients_equal_the_full_batch_step(identity):
    extra = [] if identity is None else ["loss.identity_weight=0.5", f"loss.identity_on={identity}"]
    cfg, model, users, queries, answers = _six_users(*extra)

    def grads():
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    loss, stats = total_loss(model.pretrain_forward(users, queries, answers), cfg.loss)
    loss.backward()
    full = grads()
    model.zero_grad()
    gc_stats = grad_cache_step(model.pretrain_forward, users, queries, answers, cfg.loss, chunk_size=2)
    cached = grads()
    assert gc_stats["chunks"] == 3.0
    assert gc_stats["loss"] == pytest.approx(stats["loss"], rel=1e-5)
    assert set(full) == set(cached) and len(full) > 10
    assert (identity is not None) == any(n.startswith("identity.") for n in full)  # the term reaches its views
    for n in full:
        scale = full[n].abs().max().item()
        assert (full[n] - cached[n]).abs().max().item() <= 1e-5 * scale + 1e-8, n  # float summation order only
    model.zero_grad()  # one chunk on one rank takes the no-replay path: the same gradients again
    one = grad_cache_step(model.pretrain_forward, users, queries, answers, cfg.loss, chunk_size=6)
    assert one["chunks"] == 1.0 and one["loss"] == pytest.approx(stats["loss"], rel=1e-5)
    for n, g in grads().items():
        assert (full[n] - g).abs().max().item() <= 1e-5 * full[n].abs().max().item() + 1e-8, n


def _ddp_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from training import pretrain

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg, model, users, queries, answers = _six_users("optim.chunk_size=2")
        sl = slice(rank * 3, rank * 3 + 3)  # each rank holds half the users
        stats = pretrain.train_step(model, users[sl], queries[sl], answers[sl], cfg, None)
        torch.save({"stats": stats, "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_data_parallel_step_equals_the_single_process_full_batch(tmp_path):
    """2 ranks x 3 users (gloo, CPU): negatives gathered across ranks, gradients summed = one 6-user step."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    cfg, model, users, queries, answers = _six_users()
    model.zero_grad()
    loss, stats = total_loss(model.pretrain_forward(users, queries, answers), cfg.loss)
    loss.backward()
    full = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for r in ranks:
        assert r["stats"]["negatives"] == 5.0  # every other user of the global batch, not just this rank's
        assert r["stats"]["loss"] == pytest.approx(stats["loss"], rel=1e-5)
        assert set(r["grads"]) == set(full)
        for n, g in full.items():  # after the all-reduce every rank holds the full-batch gradient
            assert (r["grads"][n] - g).abs().max().item() <= 1e-5 * g.abs().max().item() + 1e-8, n
