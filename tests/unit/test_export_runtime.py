"""Serving core of the `qanchor` Triton model, without Triton: cached == full forward, cross-request batching,
cache hits/misses by key, per-request and per-scenario errors, soft prompts by path + sha256."""
import hashlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
from training.export.artifact import LoadedModel  # noqa: E402
from training.export.cache import DATA_LOSS, FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND  # noqa: E402
from training.export.runtime import EmbedRequest, QAnchorRuntime, RequestError, embed_many  # noqa: E402
from training.config import load_config  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402

pytestmark = pytest.mark.model
QUERIES = ["Will this user click concert ads?", "Likes comedies?", "x", "Is this user likely to churn next month?"]


@pytest.fixture(scope="module")
def model() -> QAnchorModel:
    m = QAnchorModel(load_config("tiny"))
    activate_lora(m)
    return m.eval()


def requests_for(model, n: int, seed: int = 0, fv: int = 1, cold=()) -> list[EmbedRequest]:
    users = random_users(model.cfg.input, n, seed=seed, cold=list(cold))
    out = []
    for i in range(n):
        ev = {s: users.event_vecs[s][i].numpy().astype(np.float16) for s in users.event_vecs}  # wire dtype
        mk = {s: users.event_mask[s][i].numpy() for s in users.event_mask}
        qs = QUERIES[: 1 + i % len(QUERIES)]
        out.append(EmbedRequest(user_id=f"u{seed}-{i}", feature_version=0 if i in cold else fv, model_version="",
                                event_vecs=ev, event_mask=mk, tabular=users.tabular[i].numpy(), queries=qs))
    return out


def reference(model, req: EmbedRequest, prompts=None) -> np.ndarray:
    from training.export.runtime import to_user_batch

    sc = [ScenarioSpec(q, None if prompts is None else prompts[j]) for j, q in enumerate(req.queries)]
    with torch.no_grad():
        return model.full_forward(to_user_batch([req], model), sc)[0].numpy()


def runtime(model, cache_bytes: int = 1 << 30) -> QAnchorRuntime:
    return QAnchorRuntime([LoadedModel(model, model.cfg, "tiny-v1", "preset:tiny", {})], cache_bytes=cache_bytes)


def test_batched_requests_equal_full_forward_and_second_call_hits(model):
    rt = runtime(model)
    reqs = requests_for(model, 5, cold=[3])
    first = rt.serve(reqs)
    for r, res in zip(reqs, first):
        assert res.embedding.shape == (len(r.queries), 128)
        assert np.abs(res.embedding - reference(model, r)).max() <= 1e-5
        assert res.status == [0] * len(r.queries) and res.model_version == "tiny-v1"
    assert [res.cache_hit for res in first] == [False] * 5
    second = rt.serve(reqs)
    assert all(res.cache_hit for res in second)
    for a, b in zip(first, second):
        assert np.abs(a.embedding - b.embedding).max() <= 1e-5
    assert rt.stats()["hits"] == 5 and rt.stats()["entries"] == 5


def test_embed_many_matches_model_embed_per_user(model):
    users = random_users(model.cfg.input, 3, seed=9)
    per_user = [[ScenarioSpec(q) for q in QUERIES[:k]] for k in (1, 4, 2)]
    with torch.no_grad():
        cache = model.encode_prefix(users)
        many = embed_many(model, cache, per_user)
        for i, scs in enumerate(per_user):
            one = model.embed(cache[i], scs)[0]
            assert (many[i] - one).abs().max().item() <= 1e-5


def test_cache_key_rules_feature_bump_misses_cold_users_share(model):
    rt = runtime(model)
    req = requests_for(model, 1, seed=1, fv=7)[0]
    assert rt.serve([req])[0].cache_hit is False
    assert rt.serve([req])[0].cache_hit is True
    req.feature_version = 8  # a feature write: the old prefix must never be reused
    assert rt.serve([req])[0].cache_hit is False
    cold = requests_for(model, 2, seed=2, cold=[0, 1])
    assert [r.cache_hit for r in rt.serve(cold[:1])] == [False]
    assert [r.cache_hit for r in rt.serve(cold[1:])] == [True]  # another cold user: same empty prefix


def test_lru_is_bounded_by_bytes(model):
    reqs = requests_for(model, 4, seed=3)
    probe = runtime(model)
    probe.serve(reqs[:1])
    one = probe.cache.nbytes
    rt = runtime(model, cache_bytes=2 * one + one // 2)  # room for two users
    rt.serve(reqs[:3])
    assert len(rt.cache) == 2 and rt.cache.nbytes <= rt.cache.max_bytes and rt.cache.stats.evictions == 1
    assert [r.cache_hit for r in rt.serve([reqs[2], reqs[1], reqs[0]])] == [True, True, False]


def test_bad_request_fails_alone(model):
    rt = runtime(model)
    good, bad, unknown = requests_for(model, 3, seed=4)
    bad.tabular = np.zeros(3, np.float32)
    unknown.model_version = "no-such-version"
    out = rt.serve([good, bad, unknown])
    assert isinstance(out[1], RequestError) and "TABULAR" in str(out[1])
    assert isinstance(out[2], RequestError) and "not served" in str(out[2])
    assert np.abs(out[0].embedding - reference(model, good)).max() <= 1e-5


def _write_prompt(tmp: Path, hidden: int, seed: int, n_tokens: int = 3) -> tuple[Path, str, torch.Tensor]:
    from training.artifacts import save_soft_prompt
    from training.tune import TuneResult  # noqa: F401  (shape of what save_soft_prompt reads)

    g = torch.Generator().manual_seed(seed)

    class R:
        prompt = torch.randn(n_tokens, hidden, generator=g) * 0.05
        prototypes = torch.randn(2, 128, generator=g)
        query, classes, metrics = "q", ["no", "yes"], {"auc": 0.5}

    d = save_soft_prompt(tmp / f"prompt{seed}", R())
    return d, hashlib.sha256((d / "prompt.safetensors").read_bytes()).hexdigest(), R.prompt


def test_soft_prompts_by_path_and_sha_with_per_scenario_errors(model, tmp_path):
    rt = runtime(model)
    d, sha, prompt = _write_prompt(tmp_path, model.hidden, 1)
    req = requests_for(model, 1, seed=5)[0]
    req.queries = ["Likes comedies?", "Likes comedies?", "x", "y", "z"]
    req.prompt_versions = ["3", "zero-shot", "4", "5", "6"]
    req.prompt_artifacts = [f"file://{d}", "", str(tmp_path / "missing"), str(d), str(d)]
    req.prompt_shas = [sha, "", "1" * 64, "0" * 64, "short"]  # a known sha would be served from the store
    res = rt.serve([req])[0]
    assert res.status == [0, 0, NOT_FOUND, DATA_LOSS, INVALID_ARGUMENT]
    assert all(res.errors[i] for i in (2, 3, 4)) and not res.errors[0]
    assert not res.embedding[2:].any()  # failed rows are zeros
    ref = reference(model, req, [prompt, None, None, None, None])
    assert np.abs(res.embedding[:2] - ref[:2]).max() <= 1e-5
    assert np.abs(res.embedding[0] - res.embedding[1]).max() > 1e-3  # the prompt really changed the embedding
    rt.serve([req])
    assert rt.stats()["prompt_loads"] == 1  # cached by sha256: the second request did not re-read the file


def test_an_empty_prompt_version_serves_the_zero_shot_embedding(model, tmp_path):
    """A tuning job that kept the query alone (training.tune, kept_zero_shot) registers a [0, hidden] prompt: it
    loads, and the scenario's embedding is exactly the zero-shot one."""
    rt = runtime(model)
    d, sha, prompt = _write_prompt(tmp_path, model.hidden, 3, n_tokens=0)
    assert prompt.shape == (0, model.hidden)
    req = requests_for(model, 1, seed=7)[0]
    req.queries = ["Likes comedies?", "Likes comedies?"]
    req.prompt_versions, req.prompt_artifacts, req.prompt_shas = ["2", "zero-shot"], [str(d), ""], [sha, ""]
    res = rt.serve([req])[0]
    assert res.status == [0, 0]
    assert np.array_equal(res.embedding[0], res.embedding[1])
    assert np.abs(res.embedding[1] - reference(model, req)[1]).max() <= 1e-5


def test_prompt_for_another_width_is_failed_precondition(model, tmp_path):
    rt = runtime(model)
    d, sha, _ = _write_prompt(tmp_path, model.hidden + 1, 2)
    req = requests_for(model, 1, seed=6)[0]
    req.queries, req.prompt_versions, req.prompt_artifacts, req.prompt_shas = ["q"], ["1"], [str(d)], [sha]
    assert rt.serve([req])[0].status == [FAILED_PRECONDITION]
