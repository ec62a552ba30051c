"""Checkpoints and soft prompts: safetensors + sha256 manifest, bitwise round trip, tamper and backbone checks."""
import json

import pytest

torch = pytest.importorskip("torch")
from training.artifacts import (ArtifactError, checkpoint_id, load_checkpoint, load_soft_prompt,  # noqa: E402
                                save_checkpoint, save_soft_prompt)
from training.config import load_config  # noqa: E402
from training.model.embedder import QAnchorModel  # noqa: E402
from training.model.suffix import ScenarioSpec  # noqa: E402
from training.model.synthetic import activate_lora, random_users  # noqa: E402
from training.tune import TuneResult  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)  # tiny matrices: extra threads only add spin-wait on shared, busy cores


@pytest.fixture(scope="module")
def trained():
    cfg = load_config("tiny")
    model = QAnchorModel(cfg)
    activate_lora(model)
    with torch.no_grad():  # stand-in for training: move every trainable tensor away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return cfg, model.eval()


def test_checkpoint_round_trip_is_bitwise(tmp_path, trained):
    cfg, model = trained
    d = save_checkpoint(tmp_path / "ckpt", model, cfg, extra={"step": 7})
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "manifest.json", "weights.safetensors"]
    loaded, cfg2, extra = load_checkpoint(d)
    assert cfg2 == cfg and extra == {"step": 7}
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # trainable and frozen tensors alike
    users = random_users(cfg.input, 3, seed=1)
    sc = [ScenarioSpec("Will this user like a comedy?")]
    with torch.no_grad():
        assert torch.equal(model.full_forward(users, sc), loaded.eval().full_forward(users, sc))
    saved = set(json.loads((d / "manifest.json").read_text())["files"])
    assert saved == {"weights.safetensors", "config.json"}


def test_checkpoint_holds_only_trainable_tensors(tmp_path, trained):
    cfg, model = trained
    from safetensors.torch import load_file

    d = save_checkpoint(tmp_path / "ckpt", model, cfg)
    names = set(load_file(str(d / "weights.safetensors")))
    assert names == set(model.trainable_names)
    assert not any("embed_tokens" in n or n.endswith("q_proj.base_layer.weight") for n in names)
    kinds = {"lora_A", "lora_B", "added_embeddings", "user_encoder.", "head."}
    assert all(any(k in n for n in names) for k in kinds)


def test_tampered_or_foreign_checkpoints_are_rejected(tmp_path, trained):
    cfg, model = trained
    d = save_checkpoint(tmp_path / "ckpt", model, cfg)
    cid = checkpoint_id(d)
    raw = bytearray((d / "weights.safetensors").read_bytes())
    raw[-1] ^= 1
    (d / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_checkpoint(d)
    d2 = save_checkpoint(tmp_path / "ckpt2", model, cfg)
    assert checkpoint_id(d2) == cid  # the id depends on content only
    other = json.loads((d2 / "config.json").read_text())
    other["backbone"]["seed"] = 1  # a different random backbone: same shapes, other weights
    (d2 / "config.json").write_text(json.dumps(other))
    manifest = json.loads((d2 / "manifest.json").read_text())
    from training.backbones import file_sha256

    manifest["files"]["config.json"] = file_sha256(d2 / "config.json")
    (d2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="backbone"):
        load_checkpoint(d2)


def test_soft_prompt_round_trip(tmp_path, trained):
    cfg, model = trained
    res = TuneResult(query="Likes comedies?", prompt=torch.randn(6, model.hidden), prototypes=torch.randn(2, 128),
                     classes=[0, 1], metrics={"auc": 0.7, "ks": 0.3})
    d = save_soft_prompt(tmp_path / "prompt", res, model_id="abc123")
    art = load_soft_prompt(d, expect_model_id="abc123")
    assert torch.equal(art.prompt, res.prompt) and torch.equal(art.prototypes, res.prototypes)
    assert art.meta["query"] == "Likes comedies?" and art.meta["n_tokens"] == 6 and art.meta["classes"] == [0, 1]
    with pytest.raises(ArtifactError, match="re-tune"):
        load_soft_prompt(d, expect_model_id="other")


def _constants(names=("a", "b")):
    import numpy as np

    from training.data.stats import Normalisation

    return Normalisation(tuple(names), np.array([1.0, 2.0]), np.array([0.5, 3.0]), np.zeros(4), np.ones(4))


def test_normalisation_ships_in_the_checkpoint_without_changing_its_id(tmp_path, trained):
    from training.data.stats import Normalisation
    from training.export.qanchor import export_normalisation
    from training.normalisation import attach_normalisation, checkpoint_normalisation

    cfg, model = trained
    plain = save_checkpoint(tmp_path / "plain", model, cfg)
    with_norm = save_checkpoint(tmp_path / "with", model, cfg, normalisation=(_constants(), {"dataset": "x"}))
    assert checkpoint_id(plain) == checkpoint_id(with_norm)  # the id names the weights, which are the same
    path = checkpoint_normalisation(with_norm)
    assert Normalisation.load(path).stats_std.tolist() == [0.5, 3.0]
    assert checkpoint_normalisation(plain) is None
    before = checkpoint_id(plain)
    attach_normalisation(plain, _constants(), {"dataset": "x"})  # a checkpoint trained before constants shipped
    assert checkpoint_id(plain) == before and checkpoint_normalisation(plain).read_bytes() == path.read_bytes()
    load_checkpoint(plain)  # the manifest stays valid
    (tmp_path / "repo" / "qanchor").mkdir(parents=True)
    out = export_normalisation(with_norm, tmp_path / "repo" / "qanchor")
    assert out.read_bytes() == path.read_bytes()
    path.write_text(path.read_text().replace("0.5", "0.25"))
    with pytest.raises(RuntimeError, match="sha256"):
        checkpoint_normalisation(with_norm)


def test_default_artifact_carries_constants_for_this_sources_yaml():
    from pathlib import Path

    from training.data.sources import load_feature_spec
    from training.data.stats import Normalisation
    from training.normalisation import checkpoint_normalisation

    spec = load_feature_spec()
    path = checkpoint_normalisation(Path(__file__).resolve().parents[2] / "artifacts" / "default")
    Normalisation.load(path).check(spec.statistics, spec.encoder_dim, str(path))


def test_set_embedding_changes_the_read_out_and_the_id_but_not_the_weights(tmp_path):
    """python -m training.artifacts set-embedding: config + manifest rewritten together (a verified checkpoint), the
    id changes (caches and soft prompts of the other read-out never match), the weights load unchanged."""
    from training.artifacts import main, set_embedding

    cfg = load_config("tiny")
    model = QAnchorModel(cfg)
    d = save_checkpoint(tmp_path / "ckpt", model, cfg, extra={"step": 3})
    before = checkpoint_id(d)
    weights = (d / "weights.safetensors").read_bytes()
    after = set_embedding(d, "hidden")
    assert after == checkpoint_id(d) != before
    assert (d / "weights.safetensors").read_bytes() == weights
    loaded, got, extra = load_checkpoint(d)
    assert got.head.embedding == "hidden" and loaded.embedding_dim == loaded.hidden and extra == {"step": 3}
    assert main(["set-embedding", str(d), "projected"]) == 0 and checkpoint_id(d) == before
    assert main(["set-embedding", str(d), "hidden@1"]) == 0
    loaded, got, _ = load_checkpoint(d)
    assert got.head.readout == "hidden@1" and loaded.served_layers == 1 and checkpoint_id(d) not in (before, after)
    assert main(["set-embedding", str(d), "projected"]) == 0 and checkpoint_id(d) == before
    for bad in ("hidden@9", "projected@1", "last"):  # beyond the tiny backbone's 2 layers; not a read-out
        with pytest.raises(SystemExit) as exc:
            main(["set-embedding", str(d), bad])
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["set-embedding", str(tmp_path / "missing"), "hidden"])
    assert exc.value.code == 2
