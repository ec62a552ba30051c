"""Transport-free serving core of the `qanchor` Triton model (the Triton file only converts tensors).

    rt = QAnchorRuntime([load_model_artifact(dir)], cache_bytes=2 << 30)
    results = rt.serve([EmbedRequest(...), ...])   # one EmbedResult or RequestError per request, in order

One `serve` call is what one Triton `execute` receives. Per model version it (1) looks every user's prefix up in
the byte-bounded LRU, (2) encodes all missing prefixes in ONE batched forward, (3) runs every request's scenario
suffixes in ONE batched forward over the users' cached prefixes (`embed_many`), so concurrent requests share
forwards. A malformed request gets a `RequestError`; a bad soft prompt fails only its scenario (status/error).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from training.export.artifact import LoadedModel
from training.export.cache import CacheKey, PrefixLRU, PromptError, PromptStore, cache_key, own
from training.export.contract import Contract
from training.export.versions import (FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND, UNKNOWN_MODEL_VERSION,
                                      VersionError)
from training.model.inputs import UserBatch
from training.model.prefix_cache import PrefixCache
from training.model.suffix import ScenarioSpec
from training.precision import autocast_for

log = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"


class RequestError(ValueError):
    """The request as a whole cannot be served (shapes, unknown model version); the message says what to fix,
    `status` is the gRPC code a client should see."""

    def __init__(self, message: str, status: int = INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.status = status


# (version, versions served now) -> a LoadedModel prepared for serving, or raises VersionError
Discover = Callable[[str, list[str]], LoadedModel]


@dataclass
class EmbedRequest:
    user_id: str
    feature_version: int  # 0 = cold start
    model_version: str  # "" = the default (first) version
    event_vecs: dict[str, np.ndarray]  # source -> [K_s, d_enc] (float16 on the wire), oldest first
    event_mask: dict[str, np.ndarray]  # source -> [K_s] bool
    tabular: np.ndarray  # [d_tab]
    queries: list[str]  # [S] scenario query texts
    prompt_versions: list[str] = field(default_factory=list)  # [S] "zero-shot" or a version label
    prompt_artifacts: list[str] = field(default_factory=list)  # [S] path / file:// URI, "" for zero-shot
    prompt_shas: list[str] = field(default_factory=list)  # [S] sha256 of prompt.safetensors, "" for zero-shot
    scenarios: list[str] = field(default_factory=list)  # [S] names, for logs


@dataclass
class EmbedResult:
    embedding: np.ndarray  # [S, out] float32; zero rows where status != 0
    cache_hit: bool
    status: list[int]
    errors: list[str]
    model_version: str


def configure_threads(threads: int) -> int:
    """Thread settings for serving on shared CPUs; call before the first forward. -> intra-op threads in use.

    Why: with torch's defaults (intra-op = all cores, OpenMP threads spinning after every parallel region) a
    model server on a busy machine burns its cores on barrier spin-waits instead of matmuls. OMP_WAIT_POLICY only
    takes effect if set before OpenMP starts (before `import torch`): the Triton model sets it at import;
    here we set it for callers that have not imported torch yet and warn otherwise. Inter-op threads are pinned
    to 1: one request's forward is a chain of ops, there is nothing to run side by side.
    """
    from training.export.cpu_wait import apply as apply_cpu_wait

    apply_cpu_wait()  # QANCHOR_CPU_WAIT: passive (default) or spin
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started by earlier torch work in this process; harmless, log and go on
        log.info("event=interop_threads_already_set threads=%d", torch.get_num_interop_threads())
    n = torch.get_num_threads()
    log.info("event=threads_configured intra_op=%d inter_op=%d omp_wait_policy=%s gomp_spincount=%s", n,
             torch.get_num_interop_threads(), os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
    return n


def prepare_for_serving(model) -> torch.dtype:
    """Inference-only model: LoRA folded into the base weights (one matmul per projection instead of three), no
    autograd state, weights stored in the serving dtype. -> that dtype.

    The dtype is the model config's `backbone.compute` through training.precision (auto = bf16 where the hardware
    multiplies bf16 natively: CUDA, or CPUs with AMX; QANCHOR_PRECISION overrides): the same switch
    training uses. In bf16 the prefix KV cache is bf16 too, so the LRU holds twice the users per byte. Merging first
    and storing the merged weights in bf16 spares autocast a cast of every weight on every call. Embeddings are
    unchanged up to float rounding (fp32) or bf16 rounding; the model can no longer be trained.
    """
    from training.precision import apply_precision, resolve_precision

    bb = model.backbone
    if hasattr(bb, "merge_and_unload"):  # a peft wrapper: untrained or trained adapters alike
        model.backbone = bb.merge_and_unload()
        log.info("event=lora_merged")
    lm = model._lm()
    trained_with = getattr(lm.config, "_attn_implementation", None)
    # QANCHOR_SERVING_ATTENTION=trained keeps the checkpoint's attention (to compare, or to rule SDPA out)
    wanted = os.environ.get("QANCHOR_SERVING_ATTENTION", "sdpa")
    if wanted not in ("sdpa", "trained"):
        raise ValueError(f"QANCHOR_SERVING_ATTENTION={wanted!r}: use sdpa (default) or trained")
    if wanted == "sdpa" and trained_with != "sdpa" and hasattr(lm, "set_attn_implementation"):
        # Serving reads attention through SDPA whatever the checkpoint trained with (the CPU preset trains eager):
        # same masks, same maths up to rounding, and no [B, heads, T, P+T] fp32 score tensor to fill, add the mask
        # to and softmax in Python-visible steps. Measured on artifacts/default, bf16, 10 scenarios, prefix misses
        # (BENCHMARKS.md): 16 requests per execute 114 -> 78 ms per request, 1 request 340 -> 300 ms; embeddings
        # vs eager: cosine >= 0.9993.
        lm.set_attn_implementation("sdpa")
        log.info("event=attention_for_serving attn_implementation=sdpa trained_with=%s", trained_with)
    model.requires_grad_(False)
    model.eval()
    dtype = resolve_precision(model.cfg.backbone.compute, model.device)
    apply_precision(model, dtype)  # every parameter is frozen now, so all of them take the serving dtype
    return dtype


def embed_many(model, cache: PrefixCache, per_user: list[list[ScenarioSpec]]) -> list[torch.Tensor]:
    """Embeddings for user i of `cache` x its own scenarios per_user[i] -> list of [S_i, out]: the model core's
    packing (QAnchorModel.embed_per_user), so concurrent requests share one forward."""
    return model.embed_per_user(cache, per_user)


def to_user_batch(reqs: list[EmbedRequest], model) -> UserBatch:
    """Stack validated requests into the model's UserBatch (float16 wire vectors -> model dtype float32)."""
    srcs = [s.name for s in model.cfg.input.sources]
    vecs = {s: torch.from_numpy(np.stack([r.event_vecs[s] for r in reqs]).astype(np.float32)) for s in srcs}
    masks = {s: torch.from_numpy(np.stack([r.event_mask[s] for r in reqs]).astype(bool)) for s in srcs}
    tab = torch.from_numpy(np.stack([r.tabular for r in reqs]).astype(np.float32))
    return UserBatch(vecs, masks, tab)


class QAnchorRuntime:
    def __init__(self, models: list[LoadedModel], cache_bytes: int = 1 << 30, max_prompts: int = 1024,
                 discover: Discover | None = None, max_versions: int = 0) -> None:
        """`discover` loads a version a request names that is not held yet (a folder published while serving);
        `max_versions` > 0 bounds the versions held: the least recently served one is unloaded first, never the
        default (the first of `models`)."""
        if not models:
            raise ValueError("no model versions to serve; export one with python -m training.export")
        self.models: "OrderedDict[str, LoadedModel]" = OrderedDict()
        self.default_version = models[0].model_version
        self.contract = Contract.for_model(models[0].model)
        self.cache = PrefixLRU(cache_bytes)
        self.prompts: dict[str, PromptStore] = {}
        self._max_prompts = max_prompts
        self._discover = discover
        self.max_versions = max_versions
        self._lock = threading.Lock()  # Triton calls execute from one thread; benchmarks and tests may not
        self.loads = self.unloads = 0
        for m in models:
            self._add(m)

    def _add(self, m: LoadedModel) -> None:
        self.models[m.model_version] = m
        self.prompts[m.model_version] = PromptStore(
            m.model.hidden, "" if m.source_id.startswith("preset:") else m.source_id, self._max_prompts)

    @property
    def model_versions(self) -> list[str]:
        return list(self.models)

    def _resolve(self, version: str) -> None:
        """Hold `version`, loading it from the model repository if it was published after start-up."""
        if version in self.models:
            self.models.move_to_end(version)
            return
        if self._discover is None:
            raise RequestError(f"{UNKNOWN_MODEL_VERSION} {version!r}: not served here (serving "
                               f"{self.model_versions}); route the A/B arm to a served version or export it",
                               NOT_FOUND)
        with self._lock:
            if version in self.models:
                return
            try:
                loaded = self._discover(version, self.model_versions)
                self.check_contract(loaded)
            except VersionError as exc:
                raise RequestError(str(exc), exc.status) from exc
            self._add(loaded)
            self.loads += 1
            log.info("event=model_version_loaded model_version=%s versions=%s", version, self.model_versions)
            self._evict()

    def check_contract(self, loaded: LoadedModel) -> None:
        """Raises VersionError unless `loaded` takes the tensors this Triton model was configured with."""
        got = Contract.for_model(loaded.model)
        if got != self.contract:
            raise VersionError(f"model version {loaded.model_version!r} needs another tensor contract ({got}) than "
                               f"this Triton model serves ({self.contract}); export it into the repository with "
                               "python -m training.export and load the model again", FAILED_PRECONDITION)

    def _evict(self) -> None:
        while self.max_versions and len(self.models) > self.max_versions:
            victim = next(v for v in self.models if v != self.default_version)
            del self.models[victim], self.prompts[victim]
            dropped = self.cache.drop_model_version(victim)
            self.unloads += 1
            log.info("event=model_version_unloaded model_version=%s cache_entries=%d versions=%s", victim,
                     dropped, self.model_versions)

    def validate(self, r: EmbedRequest) -> str:
        """-> the model version to serve; raises RequestError on anything a client must fix."""
        version = r.model_version or self.default_version
        self._resolve(version)
        icfg = self.models[version].cfg.input
        for s in icfg.sources:
            v, m = r.event_vecs.get(s.name), r.event_mask.get(s.name)
            if v is None or m is None:
                raise RequestError(f"missing EVENTS__{s.name} / MASK__{s.name}")
            if v.shape != (s.k, icfg.d_enc) or m.shape != (s.k,):
                raise RequestError(f"EVENTS__{s.name} must be [{s.k}, {icfg.d_enc}] and MASK__{s.name} [{s.k}], got "
                                   f"{list(v.shape)} and {list(m.shape)}: pad with build_user_batch_arrays")
        if r.tabular.shape != (icfg.d_tab,):
            raise RequestError(f"TABULAR must be [{icfg.d_tab}], got {list(r.tabular.shape)}")
        s = len(r.queries)  # 0 = a warm-up: the prefix is computed into the cache, no embedding is returned
        for name in ("prompt_versions", "prompt_artifacts", "prompt_shas", "scenarios"):
            got = getattr(r, name)
            if got and len(got) != s:
                raise RequestError(f"{name} has {len(got)} entries but QUERY_TEXT has {s}")
        if r.feature_version < 0:
            raise RequestError(f"FEATURE_VERSION must be >= 0 (0 = cold start), got {r.feature_version}")
        return version

    def _scenarios(self, r: EmbedRequest, version: str) -> tuple[list[ScenarioSpec | None], list[int], list[str]]:
        specs: list[ScenarioSpec | None] = []
        status, errors = [], []
        store = self.prompts[version]
        for j, q in enumerate(r.queries):
            pv = r.prompt_versions[j] if r.prompt_versions else ZERO_SHOT
            try:
                prompt = None
                if pv not in ("", ZERO_SHOT):
                    prompt = store.get(r.prompt_artifacts[j] if r.prompt_artifacts else "",
                                       r.prompt_shas[j] if r.prompt_shas else "")
                specs.append(ScenarioSpec(q, prompt))
                status.append(0)
                errors.append("")
            except PromptError as exc:
                specs.append(None)
                status.append(exc.status)
                errors.append(str(exc))
        return specs, status, errors

    @torch.inference_mode()
    def serve(self, requests: list[EmbedRequest]) -> list[EmbedResult | RequestError]:
        out: list[EmbedResult | RequestError | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            try:
                groups.setdefault(self.validate(r), []).append(i)
            except RequestError as exc:
                out[i] = exc
        for version, idx in groups.items():
            try:
                with autocast_for(self.models[version].model):  # bf16 matmuls when the weights are stored in bf16
                    served = self._serve_version(version, [requests[i] for i in idx])
                for i, res in zip(idx, served):
                    out[i] = res
            except Exception as exc:  # a model failure fails this version's requests, never the whole call
                log.exception("event=serve_failed model_version=%s requests=%d", version, len(idx))
                for i in idx:
                    out[i] = RequestError(f"internal model error ({exc!r}); see the model server log")
        return out  # type: ignore[return-value]

    def _serve_version(self, version: str, reqs: list[EmbedRequest]) -> list[EmbedResult]:
        t0 = time.perf_counter()
        model = self.models[version].model
        keys = [cache_key(version, r.user_id, r.feature_version) for r in reqs]
        found: dict[CacheKey, PrefixCache] = {}
        hits, missing = [], []
        for k in keys:
            if k in found or k in missing:  # the same prefix twice in one call is computed once: a hit for the 2nd
                hits.append(True)
                continue
            entry = self.cache.get(k)
            hits.append(entry is not None)
            if entry is None:
                missing.append(k)
            else:
                found[k] = entry
        if missing:
            first = {k: reqs[keys.index(k)] for k in missing}
            fresh = model.encode_prefix(to_user_batch([first[k] for k in missing], model))  # one batched forward
            for j, k in enumerate(missing):
                found[k] = own(fresh[j])
                self.cache.put(k, found[k])
        per_req = [self._scenarios(r, version) for r in reqs]
        served = [i for i, (specs, _, _) in enumerate(per_req) if any(s is not None for s in specs)]
        results = [EmbedResult(np.zeros((len(r.queries), model.embedding_dim), np.float32), h, st, er, version)
                   for r, h, (_, st, er) in zip(reqs, hits, per_req)]
        if served:
            cache = PrefixCache.cat([found[keys[i]] for i in served])  # [B_served] users, one row each
            lists = [[s for s in per_req[i][0] if s is not None] for i in served]
            embs = embed_many(model, cache, lists)
            for i, e in zip(served, embs):
                ok = [j for j, s in enumerate(per_req[i][0]) if s is not None]
                results[i].embedding[ok] = e.float().cpu().numpy()
        for r, res in zip(reqs, results):
            if any(res.status):
                log.warning("event=scenario_errors user=%s statuses=%s", r.user_id, res.status)
        log.debug("event=served model_version=%s requests=%d misses=%d ms=%.1f", version, len(reqs), len(missing),
                  (time.perf_counter() - t0) * 1000)
        return results

    def stats(self) -> dict[str, int]:
        s = self.cache.stats
        return {"hits": s.hits, "misses": s.misses, "evictions": s.evictions, "rejected": s.rejected,
                "entries": len(self.cache), "bytes": self.cache.nbytes,
                "prompt_loads": sum(p.loads for p in self.prompts.values()), "version_loads": self.loads,
                "version_unloads": self.unloads}


__all__ = ["EmbedRequest", "EmbedResult", "QAnchorRuntime", "RequestError", "configure_threads", "embed_many",
           "prepare_for_serving"]
