"""Typed configuration for the Q-Anchor model, its losses, the trainer and soft-prompt tuning.

One `QAnchorConfig` describes a model completely: it is stored inside every checkpoint (as JSON) and rebuilt
from it, so a checkpoint never depends on the YAML preset it came from.

    cfg = load_config("tiny", overrides=["loss.tau=0.05", "lora.r=8"])
    cfg.to_json()  /  QAnchorConfig.from_dict(json.loads(...))
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESET_DIR = Path(__file__).parent / "configs"
NEGATIVE_TERMS = ("ud", "uu", "du", "dd")  # u = anchor (user) embedding, d = answer (document) embedding
NEGATIVE_PRESETS = {
    # GTE-style improved contrastive loss: every in-batch pairing of anchors and answers is a negative.
    "paper": ("ud", "uu", "du", "dd"),
    # The public Q-Anchor code comments the answer-answer term out.
    "code": ("ud", "uu", "du"),
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the accepted values."""


@dataclass
class SourceConfig:
    name: str  # behaviour source (feature_repo/sources.yaml); names its <name_start>/<name_end> tokens
    k: int  # events kept per user for this source: fixed placeholder count, so every prefix has one length

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"source name {self.name!r} must be an identifier (letters, digits, _)")
        if self.k < 1:
            raise ConfigError(f"source {self.name}: k must be >= 1, got {self.k}")


@dataclass
class InputConfig:
    sources: list[SourceConfig] = field(  # mirrors feature_repo/sources.yaml: the feature schema the model reads
        default_factory=lambda: [SourceConfig("liked", 32), SourceConfig("neutral", 16), SourceConfig("disliked", 16)]
    )
    d_enc: int = 384  # event-vector width: all-MiniLM-L6-v2 output, computed once at ingest
    d_tab: int = 16  # tabular statistics vector width (standardised per feature)
    tabular_tokens: int = 1  # LLM tokens spent on the tabular vector; the paper repeats one projection 50x
    preamble: str = "The following describes one user's recent behaviour."  # text before the soft tokens
    max_query_tokens: int = 64  # scenario queries are short questions; longer ones are truncated
    max_answer_tokens: int = 96  # answer texts (NTP target and semantic tower input) are truncated here
    padding_side: Literal["right", "left"] = "right"  # suffix padding; pooling finds <USER_EMB> on either side
    # the hierarchy's coarse levels: one user token + one token per source after <USER> (paper Table 3 ablates
    # them: "w/o user+source tokens"). False leaves only event and tabular tokens in the prefix.
    summary_tokens: bool = True

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        names = [s.name for s in self.sources]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"input.sources must be non-empty with unique names, got {names}")
        if "tabular" in names:
            raise ConfigError("'tabular' is reserved for the tabular vector; rename that source")
        for f in ("d_enc", "d_tab", "tabular_tokens", "max_query_tokens", "max_answer_tokens"):
            if getattr(self, f) < 1:
                raise ConfigError(f"input.{f} must be >= 1, got {getattr(self, f)}")
        if self.padding_side not in ("right", "left"):
            raise ConfigError(f"input.padding_side must be 'right' or 'left', got {self.padding_side!r}")

    @property
    def source_k(self) -> dict[str, int]:
        return {s.name: s.k for s in self.sources}


@dataclass
class BackboneConfig:
    kind: Literal["tiny", "smollm2", "hf"] = "smollm2"  # where weights come from: random / packaged GGUF / local dir
    name: str = "smollm2-135m-instruct"  # recorded in checkpoints; the backbone is referenced, never copied
    path: str = ""  # kind=hf: local Hugging Face directory ("$VAR" expanded); never a hub id (offline only)
    arch: Literal["llama", "qwen2"] = "llama"  # kind=tiny: which architecture the random config mimics
    hidden: int = 32  # kind=tiny: width; real backbones read it from their own config
    layers: int = 2  # kind=tiny: decoder layers
    heads: int = 4  # kind=tiny: attention heads
    kv_heads: int = 2  # kind=tiny: grouped-query KV heads, as in SmolLM2 / Qwen2.5
    intermediate: int = 64  # kind=tiny: MLP width
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # CPU runs fp32; GPUs may use bf16
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"  # both accept our custom 4-D masks
    # matmul precision (training.precision): auto = bf16 on CUDA and on CPUs with AMX, else fp32.
    # Frozen weights are then stored in bf16, trainable ones stay fp32. QANCHOR_PRECISION overrides at run time.
    compute: Literal["auto", "float32", "bfloat16"] = "auto"
    # keep only the first N decoder layers of the loaded backbone (0 = all; the final norm and LM head stay): a
    # cheaper CPU preset buys more steps per hour with a shallower LLM (docs/model.md "A shallower backbone")
    keep_layers: int = 0
    seed: int = 0  # kind=tiny weights and all new parameters are drawn from this seed

    def __post_init__(self) -> None:
        if self.kind not in ("tiny", "smollm2", "hf"):
            raise ConfigError(f"backbone.kind must be tiny|smollm2|hf, got {self.kind!r}")
        if self.kind == "hf" and not self.path:
            raise ConfigError("backbone.kind=hf needs backbone.path (a local HF directory, e.g. '$QWEN25_05B_DIR')")
        if self.compute not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"backbone.compute must be auto|float32|bfloat16, got {self.compute!r}")
        if self.keep_layers < 0:
            raise ConfigError(f"backbone.keep_layers must be >= 0 (0 = every layer), got {self.keep_layers}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError("backbone.hidden must divide by heads and heads by kv_heads")


@dataclass
class LoraSettings:
    enabled: bool = True  # the paper tunes the backbone only through LoRA
    r: int = 64  # paper: r=64
    alpha: int = 32  # paper: alpha=32 (scale alpha/r = 0.5)
    dropout: float = 0.05  # mild regularisation; set 0 for bitwise-reproducible gradients
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # HF module names, so pretrained weights load unchanged

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or not 0.0 <= self.dropout < 1.0 or not self.targets:
            raise ConfigError("lora: need r>=1, alpha>=1, 0<=dropout<1 and at least one target module")


HEAD_EMBEDDINGS = ("projected", "hidden")


@dataclass
class HeadConfig:
    mid: int = 512  # paper: hidden -> 512 -> 128 with ReLU
    out: int = 128  # the head's width (the contrastive towers' space; served when embedding is "projected")
    # What inference serves: "projected" = the head's L2-normalised output ([out]); "hidden" = the L2-normalised
    # <USER_EMB> hidden state itself ([backbone hidden], 576 for SmolLM2-135M), the representation before the
    # projection head, which linear probes read better (docs/model.md "Which embedding to serve"). Training always
    # contrasts in the head's space; this only picks the output, so it never changes the weights.
    embedding: str = "projected"
    # With embedding "hidden": the decoder layer (1-based) whose <USER_EMB> state is served; None = the last. Inference
    # (prefix cache, suffix pass, tuning) runs as a model cut after that layer: its residual stream through the
    # final norm, and a prefix cache of that many layers (docs/model.md "Which layer to serve"). Training always runs
    # every layer.
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.mid < 1 or self.out < 1:
            raise ConfigError("head.mid and head.out must be >= 1")
        if self.embedding not in HEAD_EMBEDDINGS:
            raise ConfigError(f"head.embedding={self.embedding!r}; choose one of {list(HEAD_EMBEDDINGS)}")
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)
                                       or self.layer < 1):
            raise ConfigError(f"head.layer={self.layer!r}: a decoder layer number >= 1, or null for the last")
        if self.layer is not None and self.embedding != "hidden":
            raise ConfigError("head.layer reads the <USER_EMB> state at an earlier layer: it needs head.embedding "
                              "hidden (the head was trained on the last layer's state)")

    @property
    def readout(self) -> str:
        """What is served, as one string: "projected", "hidden" or "hidden@LAYER" (parse_readout's inverse)."""
        return self.embedding if self.layer is None else f"{self.embedding}@{self.layer}"


def parse_readout(text: str) -> tuple[str, int | None]:
    """"hidden@24" -> ("hidden", 24); "hidden" / "projected" -> (it, None). Raises ConfigError on anything else."""
    embedding, sep, layer = text.partition("@")
    if embedding not in HEAD_EMBEDDINGS or (sep and not layer.isdigit()):
        raise ConfigError(f"read-out {text!r}: one of {list(HEAD_EMBEDDINGS)}, or hidden@LAYER (e.g. hidden@24)")
    out = (embedding, int(layer) if sep else None)
    HeadConfig(embedding=out[0], layer=out[1])  # the same checks as a config
    return out


@dataclass
class LossConfig:
    tau: float = 0.07  # InfoNCE temperature on cosine similarities (public code)
    margin: float = 0.1  # false-negative filter: drop a negative scoring above s(u_i, v_i) + margin
    negative_terms: list[str] = field(default_factory=lambda: list(NEGATIVE_PRESETS["paper"]))  # or "code"
    contrastive_weight: float = 1.0  # paper: L = L_con + L_ntp, 1:1
    ntp_weight: float = 1.0  # weight of next-token prediction on answer tokens
    # user-identity term (not in the paper; docs/model.md "A user-identity term"): the <USER_EMB> state of each
    # anchor must pick its own user's input summary (per-source mean event vectors + tabular) among the batch's
    # users, symmetric InfoNCE at tau. 0 = off (the paper's objective).
    identity_weight: float = 0.0
    identity_on: Literal["hidden", "embedding"] = "hidden"  # the LLM state before the head, or the served embedding
    identity_dim: int = 64  # width of the two small projections compared by the identity term

    def __post_init__(self) -> None:
        if isinstance(self.negative_terms, str):
            if self.negative_terms not in NEGATIVE_PRESETS:
                raise ConfigError(f"loss.negative_terms preset must be one of {list(NEGATIVE_PRESETS)}")
            self.negative_terms = list(NEGATIVE_PRESETS[self.negative_terms])
        bad = [t for t in self.negative_terms if t not in NEGATIVE_TERMS]
        if bad or not self.negative_terms:
            raise ConfigError(f"loss.negative_terms: unknown {bad}; choose from {NEGATIVE_TERMS} or 'paper'/'code'")
        if self.identity_on not in ("hidden", "embedding") or self.identity_dim < 1 or self.identity_weight < 0:
            raise ConfigError("loss: identity_on must be hidden|embedding, identity_dim >= 1, identity_weight >= 0")
        if self.tau <= 0 or self.margin < 0 or self.contrastive_weight < 0 or self.ntp_weight < 0:
            raise ConfigError("loss: tau must be > 0; margin and weights must be >= 0")


@dataclass
class OptimConfig:
    lr: float = 2e-4  # paper: 2e-4, AdamW, cosine
    weight_decay: float = 0.01  # AdamW decoupled decay on trainable params only
    warmup_steps: int = 100  # linear warm-up before the cosine decay
    steps: int = 2000  # total optimiser steps (paper: 50k at batch 2048; far less data here)
    schedule: Literal["cosine", "constant"] = "cosine"
    batch_size: int = 64  # users per optimiser step = in-batch negatives seen by InfoNCE
    chunk_size: int = 16  # GradCache sub-batch: bounds activation memory, keeps all batch_size negatives
    grad_clip: float = 1.0  # max global grad norm
    seed: int = 0  # data order and dropout
    # users per question in a batch. 1: every user draws its own pair, so in-batch negatives almost always answer
    # *other* questions and the contrastive loss is solved by the question alone (docs/model.md, "Question
    # groups"). g > 1: the batch is batch_size / g groups of g users answering the same question.
    question_group: int = 1
    # grouped batches start at this step; before it every user draws its own question. Mixed batches leave the
    # collapse phase in ~30 steps by matching question to answer kind; grouped batches from step 0 stay collapsed
    # far longer (docs/model.md, "The recipe").
    question_group_from: int = 0
    # [[from, group], ...]: group sizes that change during the run (overrides the two fields above when set);
    # larger groups later leave fewer negatives that another question alone beats. `from` is a step (an int) or a
    # share of optim.steps (a float in [0, 1), resolved as round(share * steps)), so a schedule written as shares
    # moves with --steps: [[0.0833, 4], [0.5, 8]] is steps 150 and 900 of 1,800, 75 and 450 of 900.
    question_group_schedule: list = field(default_factory=list)
    # questions per user in grouped phases. 1: every user of a group answers one question. q > 1: the batch is
    # g x q grids (g users, each answering the same q questions), so an anchor's negatives also hold its own user's
    # answers to other questions, which only the question beats (docs/model.md, "Question grids").
    questions_per_user: int = 1
    # learning-rate multiplier for parameters trained from scratch (adapters, head, added-token rows, identity
    # views); LoRA factors use `lr`. Randomly initialised parts need larger steps to leave the collapse phase.
    new_params_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.steps < 1 or self.batch_size < 2 or self.chunk_size < 1 or self.warmup_steps < 0:
            raise ConfigError("optim: need lr>0, steps>=1, batch_size>=2 (in-batch negatives), chunk_size>=1")
        sched = [tuple(x) for x in self.question_group_schedule]
        if any(len(x) != 2 or not _is_step_or_share(x[0]) or isinstance(x[1], bool) or not isinstance(x[1], int)
               or x[1] < 1 or self.batch_size % x[1] for x in sched):
            raise ConfigError("optim.question_group_schedule must be [[from, group], ...]: `from` a step (int >= 0) "
                              "or a share of optim.steps (a float in [0, 1)), groups dividing "
                              f"batch_size={self.batch_size}; got {sched}")
        starts = [a for a, _ in self.group_schedule()]
        if starts != sorted(set(starts)):
            raise ConfigError(f"optim.question_group_schedule must start its phases at increasing steps; got {sched}, "
                              f"which is steps {starts} of optim.steps={self.steps}")
        if self.questions_per_user < 1:
            raise ConfigError(f"optim.questions_per_user must be >= 1, got {self.questions_per_user}")
        grouped = [g for _, g in self.group_schedule()] or [self.question_group]
        bad = [g for g in grouped if g > 1 and self.batch_size % (g * self.questions_per_user)]
        if self.questions_per_user > 1 and bad:
            raise ConfigError(f"optim: a grid of question_group x questions_per_user ({bad[0]} x "
                              f"{self.questions_per_user}) must divide batch_size={self.batch_size}")
        if self.question_group_from < 0:
            raise ConfigError(f"optim.question_group_from must be >= 0, got {self.question_group_from}")
        if self.new_params_lr_scale <= 0:
            raise ConfigError(f"optim.new_params_lr_scale must be > 0, got {self.new_params_lr_scale}")
        if self.question_group < 1 or self.batch_size % self.question_group:
            raise ConfigError(f"optim.question_group must divide batch_size={self.batch_size}, "
                              f"got {self.question_group}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule must be cosine|constant, got {self.schedule!r}")

    def group_schedule(self) -> list[tuple[int, int]]:
        """question_group_schedule as (step, group) pairs of this run: shares of optim.steps rounded to a step."""
        return [(a if isinstance(a, int) else math.floor(a * self.steps + 0.5), int(g))
                for a, g in self.question_group_schedule]


def _is_step_or_share(x: object) -> bool:
    if isinstance(x, bool):
        return False
    return (isinstance(x, int) and x >= 0) or (isinstance(x, float) and 0.0 <= x < 1.0)


ASPECT_ANSWER_STYLES = ("counts", "own")  # training.data.future_topics writes the answers of each


@dataclass
class DataConfig:
    top_k: int = 10  # QA pairs per user: the k history topics on which the user is most unusual
    # one question per aspect of the future window (genres, activity, ratings, era, what they like), besides the
    # one-summary future question (training.data.future_topics): same-question batches then hold answers that
    # differ only in what each user goes on to do
    future_aspects: bool = False
    # answer texts of those aspects (training.data.future_topics): "counts" quote counts out of the future window in
    # every aspect (so every answer repeats the user's volume), "own" state only each aspect's own facts
    aspect_answers: str = "counts"
    # yes/no checks per user: does one genre / release decade appear in the future window (answers lead with
    # "Yes"/"No"; training.data.future_topics.draw_checks); 0 = none, the default artifact's
    future_checks: int = 0
    # pretraining only: each step draws a random order for a user's same-second events (training.data.collate
    # user_record), so the embedding stops reading the order a producer happened to send them in (docs/model.md)
    tie_shuffle: bool = False

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ConfigError(f"data.top_k must be >= 0, got {self.top_k}")
        if self.aspect_answers not in ASPECT_ANSWER_STYLES:
            raise ConfigError(f"data.aspect_answers must be one of {ASPECT_ANSWER_STYLES}, got {self.aspect_answers!r}")
        if self.future_checks < 0:
            raise ConfigError(f"data.future_checks must be >= 0, got {self.future_checks}")

    def pair_options(self) -> dict[str, Any]:
        """The keyword arguments of a pair builder (training.data.pairs.build_pairs, event_pairs.build_event_pairs)."""
        return {"top_k": self.top_k, "future_aspects": self.future_aspects, "aspect_answers": self.aspect_answers,
                "future_checks": self.future_checks}


TUNE_OBJECTIVES = ("prototype", "probe")  # training.tune: prototype softmax (paper) or a probe-started head


@dataclass
class TuneConfig:
    n_tokens: int = 6  # paper: 6 soft-prompt vectors (1 -> 6 raises AUC; saturates at 8-16)
    steps: int = 300  # paper: 500 on one GPU; prefix is cached so each step is suffix-only
    lr: float = 1e-2  # Adam; prompts start from real token embeddings, so small relative moves suffice
    tau: float = 0.1  # prototype softmax temperature on cosine scores
    batch_size: int = 64  # users per tuning step
    val_fraction: float = 0.2  # held-out users for AUC/KS
    seed: int = 0
    objective: str = "prototype"  # or "probe": a logistic head started at the linear probe (training.tune)
    anchor_weight: float = 0.0  # > 0: pull each tuned embedding toward the user's zero-shot one (training.tune)
    # held-out AUC margin over the query alone a tuned prompt needs, else the query alone is kept (an empty prompt);
    # -1: always keep the tuned prompt (training.tune)
    min_val_gain: float = 0.0
    # share of the held-out users that make no choice (C, best step, keep-or-not) and only score the result, so the
    # reported val_gain is not the best of those choices (training.tune); 0: the same users choose and report
    verdict_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.n_tokens < 1 or self.steps < 1 or self.lr <= 0 or self.tau <= 0 or self.batch_size < 2 \
                or not 0 < self.val_fraction < 1 or not self.anchor_weight >= 0 or not -1 <= self.min_val_gain < 1 \
                or not 0 <= self.verdict_fraction < 1:
            raise ConfigError(f"tune: need n_tokens>=1, steps>=1, lr>0, tau>0, batch_size>=2, 0<val_fraction<1, "
                              f"anchor_weight>=0, -1<=min_val_gain<1, 0<=verdict_fraction<1 (got {self})")
        if self.objective not in TUNE_OBJECTIVES:
            raise ConfigError(f"tune.objective {self.objective!r} is not one of {', '.join(TUNE_OBJECTIVES)}")


@dataclass
class QAnchorConfig:
    name: str = "smollm2"  # preset name, informational
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QAnchorConfig":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        known = {"input": InputConfig, "backbone": BackboneConfig, "lora": LoraSettings, "head": HeadConfig,
                 "loss": LossConfig, "optim": OptimConfig, "data": DataConfig, "tune": TuneConfig}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; valid: {sorted(sections)}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in known:
                kwargs[key] = _build(known[key], value or {}, key)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def _build(section_cls: type, values: dict[str, Any], where: str) -> Any:
    valid = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - valid
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {sorted(unknown)}; valid: {sorted(valid)}")
    return section_cls(**values)


def _apply_override(d: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like 'section.key=value'")
    dotted, raw = override.split("=", 1)
    parts = dotted.strip().split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"override {override!r}: {p!r} is not a config section")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"override {override!r}: unknown key {parts[-1]!r}; valid: {sorted(node)}")
    value = yaml.safe_load(raw)  # YAML scalars: 1 -> int, 0.1 -> float, true -> bool, [a, b] -> list
    old = node[parts[-1]]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if old is not None and not isinstance(value, type(old)) and not (isinstance(old, list) and isinstance(value, str)):
        raise ConfigError(f"override {override!r}: expected {type(old).__name__}, got {type(value).__name__}")
    node[parts[-1]] = value


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> QAnchorConfig:
    """Load a preset name (tiny, smollm2, qwen2.5-0.5b) or a YAML path, apply 'a.b=value' overrides, validate."""
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    path = preset if preset.is_file() else Path(name_or_path)
    if not path.is_file():
        presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"config {name_or_path!r} not found; use a preset {presets} or a path to a YAML file")
    raw = yaml.safe_load(path.read_text()) or {}
    return with_overrides(QAnchorConfig.from_dict(raw), overrides)


def with_overrides(cfg: QAnchorConfig, overrides: list[str] | None) -> QAnchorConfig:
    """A validated copy of cfg with 'a.b=value' overrides applied (e.g. a checkpoint's config, read other ways)."""
    full = cfg.to_dict()  # every field, defaults filled, so overrides can target any of them
    for o in overrides or []:
        _apply_override(full, o)
    return QAnchorConfig.from_dict(full)
