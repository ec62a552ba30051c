"""Cluster-based soft-prompt tuning for one scenario (paper §3.2.3), as a plain function.

    res = tune_soft_prompt(model, users, labels, "Will this user rate a new comedy highly?")
    res.prompt [n_tokens, hidden], res.prototypes [n_classes, out], res.metrics {"auc", "ks", ...}, res.curve

Only the prompt vectors and one prototype per class train; the model is frozen and its prefix cache is computed
once and reused by every step (the prompt sits after the query, so the cache stays valid).
Choices the paper leaves open (justified in docs/model.md): prompt after the query, right before <USER_EMB>;
prompt initialised from the embeddings of the query's own last tokens; prototypes initialised at the class means
of the initial embeddings (step 0 = nearest-centroid); cosine prototype scores; Adam, lr 1e-2, tau 0.1.

objective="probe" (binary labels) trains the prompt against the downstream view instead: a logistic head on the
standardised embedding, initialised at the quality table's linear probe fitted on the initial embeddings (so step 0
is that probe), trained with the prompt under the probe's own L2; the prompt kept is the one from the evaluation
step with the best held-out head AUC.

The held-out users (val_fraction of each class) are split in two (verdict_fraction of each class to the second):
*selection* users make every choice tuning makes (the probe's C, the best evaluated step, keep-or-not) and
*verdict* users only score the result, so the gain a job reports is not the best of the choices it made (on the
quality table, kept prompts had reported +0.014 to +0.034 held-out gains from one shared set and delivered ~0 on
test users; docs/tuning.md). Either objective keeps the query alone when tuning does not beat it on the selection
users (the same read-out fitted on the zero-shot embeddings: the prototype objective's class centroids, the probe
objective's own linear probe): the result's prompt is then empty ([0, hidden], which embeds exactly as the
zero-shot query) and metrics["kept_zero_shot"] is 1 (min_val_gain sets the margin a tuned prompt needs; -1 always
keeps it; metrics["select_gain"] is the gain it compared). metrics["val_gain"] is the tuned prompt's gain over the
query on the verdict users, with its 95% paired bootstrap interval (val_gain_low, val_gain_high); auc, ks,
auc_zero_shot, ks_zero_shot, probe_auc, probe_auc_zero_shot read them too. verdict_fraction 0 (or a class with
fewer than 2 held-out users) puts every held-out user in both roles, as before 2026-12-06 (n_select == n_verdict
== n_val).

anchor_weight > 0 (either objective) adds anchor_weight * mean(1 - cos(tuned embedding, zero-shot embedding)) over
the batch: the prompt may sharpen the label's direction but not trade away the user geometry a downstream probe
reads (measured in docs/quality.md, "Other tuning objectives").
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

from training.config import TUNE_OBJECTIVES as OBJECTIVES
from training.model.prefix_cache import PrefixCache
from training.model.embedder import QAnchorModel
from training.model.inputs import UserBatch
from training.model.suffix import ScenarioSpec
from training.precision import autocast_for

log = logging.getLogger(__name__)
DEPTHS = ("input", "deep")  # where a tuned prompt acts: input vectors in the suffix, or keys/values at every layer
Progress = Callable[[int, int, dict[str, float]], None]  # (step, total_steps, stats)


@dataclass
class TuneResult:
    query: str
    prompt: torch.Tensor  # [n_tokens, hidden] float32; [0, hidden] when the query alone was kept (kept_zero_shot)
    prototypes: torch.Tensor  # [n_classes, out] float32 (unnormalised; scores use their directions)
    classes: list  # label value of each prototype row
    metrics: dict[str, float]  # held-out users: auc, ks (tuned) and auc_zero_shot, ks_zero_shot (no prompt);
    # probe_auc, probe_auc_zero_shot: a linear probe's held-out AUC on each (binary labels)
    curve: list[dict[str, float]] = field(default_factory=list)  # per step: loss (+ val auc every eval_every)
    depth: str = "input"  # "deep": prompt is [layers, 2, kv_heads, n_tokens, head_dim] keys/values (with_deep)


def auc_ks(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Binary AUC and KS = max over thresholds of (TPR - FPR)."""
    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        raise ValueError("AUC/KS need both classes among the evaluated users; use more users or another split")
    fpr, tpr, _ = roc_curve(y_true, score)
    return float(roc_auc_score(y_true, score)), float(np.max(tpr - fpr))


def _split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: every class keeps >= 1 user on each side."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < 2:
            raise ValueError(f"class {c} has {len(idx)} user(s); tuning needs at least 2 per class")
        n_val = min(max(1, math.ceil(val_fraction * len(idx))), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train)), np.sort(np.array(val))


def _verdict_split(y: np.ndarray, held: np.ndarray, fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The held-out users -> (selection, verdict, whether they differ). Selection users make every choice tuning
    makes (the probe's C, the best evaluated step, keep-or-not); verdict users (`fraction` of each class) only score
    the result, so the gain a job reports is not the best of the choices it made (docs/tuning.md). fraction 0, or a
    class with fewer than 2 held-out users: one set does both, as before 2026-12-06."""
    if fraction > 0:
        try:
            sel, ver = _split(y[held], fraction, seed + 1)
            return held[sel], held[ver], True
        except ValueError as exc:
            log.warning("event=tune_no_verdict_users held_out=%d reason=%r using=the selection users for the "
                        "report too", len(held), str(exc))
    return held, held, False


def stratified_sample(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of n of the labels y (seeded, without replacement), each class in its share of y and never
    fewer than 2 of a class that has them (so the split and the held-out AUC stay defined): what a tuning job
    keeps when it has more labelled users than its memory holds. n >= len(y): every position."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    share = n * counts / len(y)
    floor = np.minimum(counts, 2)
    take = np.maximum(floor, np.floor(share).astype(np.int64))
    while take.sum() > n and (take > floor).any():  # the small classes' floor of 2 comes out of the largest
        take[np.argmax(take - floor)] -= 1
    for i in np.argsort(-(share - np.floor(share)), kind="stable"):  # the rest to the largest remainders
        if take.sum() >= n:
            break
        take[i] += int(take[i] < counts[i])
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), int(k), replace=False)
                                   for c, k in zip(classes, take)]))


def prefix_bytes_per_user(model: QAnchorModel, one_user: UserBatch) -> int:
    """Bytes one user's frozen prefix cache takes in tune_soft_prompt (same precision: one encode, measured)."""
    with frozen(model), autocast_for(model):
        return _encode_cache(model, one_user, 1).nbytes


@contextmanager
def frozen(model: QAnchorModel):
    """Freeze every model parameter and switch off dropout; restore both afterwards."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)


def _encode_cache(model: QAnchorModel, users: UserBatch | PrefixCache, chunk: int) -> PrefixCache:
    if isinstance(users, PrefixCache):
        return users.detach()
    with torch.no_grad():
        return PrefixCache.collect((model.encode_prefix(users[s:s + chunk])
                                    for s in range(0, users.batch_size, chunk)), users.batch_size)


def with_deep(cache: PrefixCache, prompt: torch.Tensor) -> PrefixCache:
    """`cache` with a deep prompt's keys and values ([layers, 2, kv_heads, n, head_dim]) appended for every user:
    embedding a scenario's query over it gives that scenario's deep-prompt-tuned embedding."""
    return cache.with_shared(list(prompt[:, 0]), list(prompt[:, 1]))


def _embed(model: QAnchorModel, cache: PrefixCache, idx: np.ndarray, spec: ScenarioSpec, chunk: int,
           grad: bool, deep: torch.Tensor | None = None) -> torch.Tensor:
    """Embeddings of cache[idx] under `spec`; `deep` (a deep prompt [layers, 2, kv_heads, n, head_dim]) appends its
    keys and values to every user's prefix first."""
    out = []
    with torch.set_grad_enabled(grad):
        for s in range(0, len(idx), chunk):
            sub = cache[torch.as_tensor(idx[s: s + chunk], device=cache.valid.device)]
            if deep is not None:
                sub = with_deep(sub, deep)
            out.append(model.embed(sub, [spec])[:, 0])  # [b, out]
    return torch.cat(out)


def _scores(emb: torch.Tensor, protos: torch.Tensor, tau: float) -> torch.Tensor:
    return emb @ F.normalize(protos, dim=-1).T / tau  # [N, C] cosine / tau (emb is already unit-norm)


def _metrics(y: np.ndarray, logits: torch.Tensor) -> tuple[float, float]:
    prob = torch.softmax(logits.float(), dim=-1).detach().cpu().numpy()
    if prob.shape[1] == 2:
        return auc_ks(y, prob[:, 1])
    pairs = [auc_ks((y == c).astype(int), prob[:, c]) for c in range(prob.shape[1])]  # macro one-vs-rest
    return float(np.mean([a for a, _ in pairs])), float(np.mean([k for _, k in pairs]))


def _read(y: np.ndarray, scores: torch.Tensor) -> tuple[float, float]:
    """AUC, KS of one read-out's scores: [n] logits (the probe head) or [n, C] (prototype scores)."""
    return auc_ks(y, scores.detach().float().cpu().numpy()) if scores.ndim == 1 else _metrics(y, scores)


def linear_probe_metrics(y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                         tuned: tuple[torch.Tensor, torch.Tensor],
                         zero: tuple[torch.Tensor, torch.Tensor],
                         zero_auc: float | None = None) -> dict[str, float]:
    """{"probe_auc", "probe_auc_zero_shot"}: held-out AUC of the quality table's linear probe (training.evaluate:
    logistic regression fitted on the tuning users, its C chosen on the held-out ones) on the tuned embeddings and on
    the query's alone. A downstream model fitted on the embedding gains from the prompt only if the first is higher;
    the prototype AUCs can say otherwise (docs/tuning.md). Binary labels only ({} for more classes). zero_auc: the
    query's probe AUC when the caller has already fitted that probe; `tuned` that *is* `zero` (the query kept) is
    not fitted again either."""
    from training.evaluate import val_fit

    if int(y.max()) != 1:
        return {}

    def fitted(pair: tuple[torch.Tensor, torch.Tensor]) -> float:
        x = np.zeros((len(y), pair[0].shape[1]), np.float32)
        x[train_idx], x[val_idx] = pair[0].float().cpu().numpy(), pair[1].float().cpu().numpy()
        return val_fit(x, train_idx, y[train_idx], val_idx, y[val_idx])[1]

    zero_shot = fitted(zero) if zero_auc is None else float(zero_auc)
    return {"probe_auc": zero_shot if tuned is zero else fitted(tuned), "probe_auc_zero_shot": zero_shot}


def held_out_gain(y: np.ndarray, tuned: torch.Tensor, zero: torch.Tensor, point: float, seed: int = 0,
                  draws: int = 1000) -> dict[str, float]:
    """{"val_gain", "val_gain_low", "val_gain_high"}: the keep decision's held-out AUC gain of the tuned prompt over
    the query (`point`, what the decision compared) and its 95% paired bootstrap interval over the held-out users
    (both read-outs scored on the same resamples). Scores: [n] or [n, 2] logits (binary labels); with more classes
    only the point (the interval of a macro AUC is not computed). On a few hundred users this interval is usually
    wider than the gain: docs/tuning.md, "Promote"."""
    from training.evaluate import bootstrap_counts, interval, weighted_auc

    out = {"val_gain": float(point)}
    if int(y.max()) != 1:
        return out

    def binary(s: torch.Tensor) -> np.ndarray:
        s = s.detach().float().cpu().numpy()
        return s[:, 1] - s[:, 0] if s.ndim == 2 else s

    counts = bootstrap_counts(len(y), draws, seed)
    d = weighted_auc(y, binary(tuned), counts) - weighted_auc(y, binary(zero), counts)
    out["val_gain_low"], out["val_gain_high"] = interval(d)
    return out


@dataclass
class _ProbeHead:
    """A logistic head on the standardised embedding, started at the table's probe (training.evaluate)."""
    mean: torch.Tensor  # [out] fixed, from the initial train embeddings
    scale: torch.Tensor  # [out] fixed
    w: torch.Tensor  # [out] trained
    b: torch.Tensor  # [] trained
    l2: float  # sklearn's penalty 1/(2 C) per train user, as a mean-loss weight on |w|^2
    pos_weight: torch.Tensor  # balanced classes, as the probe's class_weight="balanced"
    val_auc: float  # the starting probe's held-out AUC (training.evaluate.val_fit's, for its chosen C)

    @classmethod
    def fit(cls, e_tr: torch.Tensor, y_tr: np.ndarray, e_va: torch.Tensor, y_va: np.ndarray) -> "_ProbeHead":
        from training.evaluate import fit_probe, val_fit

        x = torch.cat([e_tr, e_va]).float().cpu().numpy()
        tr, va = np.arange(len(e_tr)), np.arange(len(e_tr), len(x))
        c, val_auc = val_fit(x, tr, y_tr, va, y_va)
        mean, scale, coef, intercept = fit_probe(x[tr], y_tr, c)
        dev = e_tr.device
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=dev)  # noqa: E731
        n_pos = float(y_tr.sum())
        return cls(t(mean), t(scale), t(coef).requires_grad_(True), t(intercept).requires_grad_(True),
                   1.0 / (2.0 * c * len(y_tr)), t((len(y_tr) - n_pos) / max(n_pos, 1.0)), val_auc)

    def snapshot(self, prompt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return prompt.detach().clone(), self.w.detach().clone(), self.b.detach().clone()

    def restore(self, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Back to a snapshot's head; returns its prompt."""
        self.w, self.b = state[1], state[2]
        return state[0]

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(emb.device.type, enabled=False):  # fp32 head, also inside a bf16 tuning pass
            return ((emb.float() - self.mean) / self.scale) @ self.w + self.b

    def loss(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(self.logits(emb), y.float(), pos_weight=self.pos_weight)
        return bce + self.l2 * (self.w ** 2).sum()

    def auc(self, emb: torch.Tensor, y: np.ndarray) -> tuple[float, float]:
        return auc_ks(y, self.logits(emb).detach().cpu().numpy())


def init_prompt(model: QAnchorModel, query_text: str, n_tokens: int) -> torch.Tensor:
    """Embeddings of the query's last n tokens (cycled if shorter): a prompt that starts as plausible text."""
    ids = model.tokenizer(query_text, add_special_tokens=False)["input_ids"] or [model.tokenizer.eos_token_id]
    ids = [ids[(len(ids) - n_tokens + i) % len(ids)] for i in range(n_tokens)]
    with torch.no_grad():
        return model.embed_ids(torch.tensor(ids, device=model.device)).float().clone()  # [n_tokens, hidden]


def init_deep_prompt(model: QAnchorModel, cache: PrefixCache, query_text: str, n_tokens: int) -> torch.Tensor:
    """A deep prompt that starts as the keys and values of the query's last n tokens (cycled if shorter), averaged
    over the users in `cache`: [served layers, 2, kv_heads, n_tokens, head_dim] float32."""
    with torch.no_grad():
        keys, values = model.query_kv(cache, query_text)  # per layer [B, kv_heads, L, head_dim]; L - 1 query tokens
        n_query = max(int(keys[0].shape[2]) - 1, 1)
        at = torch.tensor([(n_query - n_tokens + i) % n_query for i in range(n_tokens)], device=keys[0].device)
        return torch.stack([torch.stack([k[:, :, at].float().mean(0), v[:, :, at].float().mean(0)])
                            for k, v in zip(keys, values)]).clone()


def tune_soft_prompt(model: QAnchorModel, users: UserBatch | PrefixCache, labels: Sequence | np.ndarray,
                     query_text: str, n_tokens: int = 6, steps: int = 300, lr: float = 1e-2, tau: float = 0.1,
                     seed: int = 0, val_fraction: float = 0.2, batch_size: int = 64, eval_every: int = 50,
                     progress: Progress | None = None, objective: str = "prototype",
                     anchor_weight: float = 0.0, min_val_gain: float = 0.0, depth: str = "input",
                     verdict_fraction: float = 0.5) -> TuneResult:
    """Tune `n_tokens` soft-prompt vectors + one prototype per class on labelled users; report held-out AUC/KS.
    objective="probe": against a logistic head started at the linear probe instead; anchor_weight: a pull toward
    the zero-shot embedding; min_val_gain: the held-out AUC margin over the query alone a tuned prompt needs to be
    kept (-1: always keep it; module docstring). depth="deep": the prompt is n_tokens learned keys and values at
    every decoder layer (appended to each user's prefix cache, PrefixCache.with_shared) instead of n_tokens input
    vectors in the suffix; the result's prompt is then [layers, 2, kv_heads, n_tokens, head_dim]."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if depth not in DEPTHS:
        raise ValueError(f"depth {depth!r} is not one of {', '.join(DEPTHS)}")
    if not anchor_weight >= 0.0:
        raise ValueError(f"anchor_weight must be >= 0, got {anchor_weight}")
    if not -1.0 <= min_val_gain < 1.0:
        raise ValueError(f"min_val_gain must be in [-1, 1), got {min_val_gain}")
    if not 0.0 <= verdict_fraction < 1.0:
        raise ValueError(f"verdict_fraction must be in [0, 1), got {verdict_fraction}")
    raw = np.asarray(labels)
    classes = sorted(np.unique(raw).tolist())
    if len(classes) < 2:
        raise ValueError("labels hold a single class; a scenario needs positive and negative users")
    y = np.searchsorted(np.array(classes), raw)
    if objective == "probe" and len(classes) != 2:
        log.warning("event=tune_objective_fallback objective=probe classes=%d reason=needs_binary_labels "
                    "using=prototype", len(classes))
        objective = "prototype"
    n_users = users.batch_size
    if len(y) != n_users:
        raise ValueError(f"{len(y)} labels for {n_users} users")
    train_idx, held_idx = _split(y, val_fraction, seed)
    # choices (the probe's C, the best step, keep-or-not) read sel_idx; the reported held-out numbers read rep_idx
    sel_idx, rep_idx, verdict = _verdict_split(y, held_idx, verdict_fraction, seed)
    t0 = time.perf_counter()
    with frozen(model), autocast_for(model):  # bf16 matmuls when the model's frozen weights are bf16
        cache = _encode_cache(model, users, batch_size)  # the frozen prefix: computed once, reused every step
        zero = ScenarioSpec(query_text)
        e_tr0, e_sel0 = (_embed(model, cache, ix, zero, batch_size, False) for ix in (train_idx, sel_idx))
        e_rep0 = _embed(model, cache, rep_idx, zero, batch_size, False) if verdict else e_sel0
        query_alone = (e_tr0, e_rep0)
        centroids = torch.stack([e_tr0[y[train_idx] == c].mean(0) for c in range(len(classes))])
        zs_auc, zs_ks = _metrics(y[rep_idx], _scores(e_rep0, centroids, tau))  # nearest centroid, reported
        deep = depth == "deep"

        def emb_of(ix: np.ndarray, p: torch.Tensor, grad: bool) -> torch.Tensor:  # the prompt p's embeddings
            return _embed(model, cache, ix, ScenarioSpec(query_text, None if deep else p), batch_size, grad,
                          deep=p if deep else None)

        if deep:  # started from the first batch of training users' keys/values of the query
            first = cache[torch.as_tensor(train_idx[:batch_size], device=cache.valid.device)]
            prompt = init_deep_prompt(model, first, query_text, n_tokens).requires_grad_(True)
        else:
            prompt = init_prompt(model, query_text, n_tokens).requires_grad_(True)
        with torch.no_grad():
            e_init = emb_of(train_idx, prompt, False)
            protos = torch.stack([e_init[y[train_idx] == c].mean(0) for c in range(len(classes))])
        protos = protos.float().clone().requires_grad_(True)
        head = zs_head = None
        if objective == "probe":
            head = _ProbeHead.fit(e_init, y[train_idx], emb_of(sel_idx, prompt, False), y[sel_idx])
            zs_head = _ProbeHead.fit(e_tr0, y[train_idx], e_sel0, y[sel_idx])  # the query alone, by its own probe
            best = (-math.inf, 0, head.snapshot(prompt))  # the best evaluated tuned step: (sel auc, step, state)
        params = [prompt, protos] if head is None else [prompt, head.w, head.b]
        opt = torch.optim.Adam(params, lr=lr)
        rng = np.random.default_rng(seed)
        curve: list[dict[str, float]] = []
        y_t = torch.as_tensor(y, device=model.device)
        row_of = np.full(n_users, -1)
        row_of[train_idx] = np.arange(len(train_idx))  # user index -> its row of e_tr0 (the zero-shot anchors)
        anchors = F.normalize(e_tr0.float(), dim=-1)
        for step in range(1, steps + 1):
            batch = rng.choice(train_idx, size=min(batch_size, len(train_idx)), replace=False)
            emb = emb_of(batch, prompt, True)
            if head is None:
                loss = F.cross_entropy(_scores(emb, protos, tau), y_t[batch])  # prototype softmax
            else:
                loss = head.loss(emb, y_t[batch])
            if anchor_weight > 0:
                cos = (F.normalize(emb.float(), dim=-1) * anchors[row_of[batch]]).sum(-1)
                loss = loss + anchor_weight * (1.0 - cos).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            point = {"step": float(step), "loss": loss.item()}
            if step % eval_every == 0 or step == steps:  # on the selection users
                with torch.no_grad():
                    e_sel = emb_of(sel_idx, prompt, False)
                    if head is None:
                        point["val_auc"], point["val_ks"] = _metrics(y[sel_idx], _scores(e_sel, protos, tau))
                    else:
                        point["val_auc"], point["val_ks"] = head.auc(e_sel, y[sel_idx])
                        if point["val_auc"] > best[0]:
                            best = (point["val_auc"], step, head.snapshot(prompt))
            curve.append(point)
            if progress is not None:
                progress(step, steps, point)
        # the decision, on the selection users: the tuned prompt against the query alone, each by its own read-out
        tuned_sel, zs_sel = ((best[0], zs_head.val_auc) if head is not None else
                             (curve[-1]["val_auc"], _metrics(y[sel_idx], _scores(e_sel0, centroids, tau))[0]))
        kept_zero_shot = not tuned_sel > zs_sel + min_val_gain
        if head is not None:
            prompt = head.restore(best[2])  # the best evaluated prompt with its head
        # the report, on the verdict users (who chose nothing): the tuned prompt and the query, each by its read-out
        with torch.no_grad():
            e_rep_tuned = emb_of(rep_idx, prompt.detach(), False)
        scores = ((head.logits(e_rep_tuned), zs_head.logits(e_rep0)) if head is not None else
                  (_scores(e_rep_tuned, protos.detach(), tau), _scores(e_rep0, centroids, tau)))
        (tuned_auc, tuned_ks), zs_read = (_read(y[rep_idx], s) for s in scores)
        gain = held_out_gain(y[rep_idx], *scores, point=tuned_auc - zs_read[0], seed=seed)
        if kept_zero_shot:
            log.info("event=tune_kept_zero_shot query=%r objective=%s val_auc_tuned=%.4f val_auc_zero_shot=%.4f "
                     "min_val_gain=%g n_select=%d reason=the tuned prompt did not beat the query alone on the "
                     "held-out selection users", query_text, objective, tuned_sel, zs_sel, min_val_gain,
                     len(sel_idx))
            prompt, e_rep, (auc, ks) = (prompt[:, :, :, :0] if deep else prompt[:0]), e_rep0, zs_read
            if head is None:
                protos = centroids
            else:
                head = zs_head
        else:
            e_rep, auc, ks = e_rep_tuned, tuned_auc, tuned_ks
        # fit on its own training users, next to the zero-shot query's (centroids of those same users)
        e_tr = e_tr0 if kept_zero_shot else emb_of(train_idx, prompt.detach(), False)
        if head is not None:  # the prototypes become the kept prompt's class means
            protos = torch.stack([e_tr[y[train_idx] == c].mean(0) for c in range(len(classes))]).float()
        train_auc, _ = _metrics(y[train_idx], _scores(e_tr, protos.detach(), tau))
        train_zs_auc, _ = _metrics(y[train_idx], _scores(e_tr0, centroids, tau))
    reuse = zs_head.val_auc if zs_head is not None and not verdict else None  # that probe, on these same users
    metrics = {"auc": auc, "ks": ks, "auc_zero_shot": zs_auc, "ks_zero_shot": zs_ks,
               "train_auc": train_auc, "train_auc_zero_shot": train_zs_auc,
               **linear_probe_metrics(y, train_idx, rep_idx, query_alone if kept_zero_shot else (e_tr, e_rep),
                                      query_alone, zero_auc=reuse),
               "n_train": float(len(train_idx)), "n_val": float(len(held_idx)), "n_select": float(len(sel_idx)),
               "n_verdict": float(len(rep_idx)),  # the users auc..val_gain read (the selection users without a split)
               "kept_zero_shot": float(kept_zero_shot), "select_gain": float(tuned_sel - zs_sel), **gain,
               **({"best_step": 0.0 if kept_zero_shot else float(best[1])} if objective == "probe" else {}),
               "seconds": time.perf_counter() - t0}
    log.info("event=tune_done query=%r objective=%s anchor_weight=%g steps=%d kept_zero_shot=%d auc=%.4f ks=%.4f "
             "auc_zero_shot=%.4f probe_auc=%.4f probe_auc_zero_shot=%.4f select_gain=%+.4f val_gain=%+.4f "
             "val_gain_low=%+.4f val_gain_high=%+.4f n_train=%d n_select=%d n_verdict=%d", query_text, objective,
             anchor_weight, steps, kept_zero_shot, auc, ks, zs_auc, metrics.get("probe_auc", float("nan")),
             metrics.get("probe_auc_zero_shot", float("nan")), metrics["select_gain"], gain["val_gain"],
             gain.get("val_gain_low", float("nan")), gain.get("val_gain_high", float("nan")), len(train_idx),
             len(sel_idx), len(rep_idx))
    return TuneResult(query=query_text, prompt=prompt.detach(), prototypes=protos.detach(), classes=classes,
                      metrics=metrics, curve=curve, depth=depth)
